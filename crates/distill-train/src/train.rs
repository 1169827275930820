//! Training entry point: load data, split, dispatch by student kind.
