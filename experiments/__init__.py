"""The paper's experiments in simulation: one script per result, each writing a markdown
table, a JSON file of the same numbers and a PNG into ``docs/results/`` (see its README)."""
