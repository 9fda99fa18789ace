"""What plugs into the model's attention: the registered attention function, RAM recording, interventions."""
