"""The node agent: joins a fog, pulls tasks, runs them in worker processes, reports back."""
