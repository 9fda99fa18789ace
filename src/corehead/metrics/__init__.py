"""Numbers computed from model outputs: answer scoring per task."""
