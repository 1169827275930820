//! The teach stage: label a task's inputs with a premium model, cached, resumable, budget-capped and ledgered.
