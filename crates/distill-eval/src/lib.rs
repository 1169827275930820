//! The eval stage: student vs teacher quality, cost, break-even, cascade threshold and a readable report.
