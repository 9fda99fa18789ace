"""Pictures of results (matplotlib, written as PNG next to the results they show)."""
