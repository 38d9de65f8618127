//! The compute port over Azure Resource Manager (issue 4).
