//! The vmpool binary: configuration, tracing, serve. Everything else is in the library.

use std::process::ExitCode;

use vmpool::config::Config;
use vmpool::startup;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("vmpool: {e}");
            return ExitCode::from(2);
        }
    };
    startup::init_tracing(config.log_format);
    match startup::serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmpool: {e}");
            ExitCode::FAILURE
        }
    }
}
