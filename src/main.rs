//! The `cr` command: parse the command line, dispatch, print errors as one
//! sentence with a hint.

use clap::Parser;

fn main() {
    let cli = cr::cli::Cli::parse();
    match cr::cli::dispatch(cli) {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("cr: {}", cr::cli::describe(&err));
            std::process::exit(1);
        }
    }
}
