"""The promotion gate: a validated policy applied to an eval report (contract 4) gives the gate
decision (contract 5; docs/contracts.md), recorded on the model version."""
