//! Integration tests, in one binary so builds stay quick. Each module is one area; shared
//! helpers are in `support`.

mod support;

mod api;
mod store_contract;
mod table_store;
