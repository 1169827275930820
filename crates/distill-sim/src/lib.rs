//! The simulated teacher: an OpenAI-compatible server that answers a task from gold labels, for rehearsals, tests and benchmarks.
