//! The VM table in Azure Table Storage (issue 3).
