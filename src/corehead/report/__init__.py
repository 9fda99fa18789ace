"""The HTML report of run folders (`corehead report`): reads what the studies wrote, never a model."""
