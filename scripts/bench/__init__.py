"""rpfs benchmarks, measured side by side with its peers in one run; run by scripts/bench.sh
(`python3 -m bench` with scripts/ on the path). The modules, by concern:

  common    sizes, the repository, where the rpfs binaries are, running commands
  workload  the disk images and workloads the sections build
  peers     the tools measured beside rpfs: how each ingests, mounts and exposes the disks
  measure   the generic measures, and the sections that run them and return plain data
  report    the Markdown report (with its targets table) and the SVG chart, from a run's results
  __main__  the options; runs the sections, saves the results as JSON, renders the report
"""
