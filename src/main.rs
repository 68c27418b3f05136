//! The `cr` command: parse the command line, dispatch, print errors as one
//! sentence with a hint.

use clap::Parser;

fn main() {
    // Like any Unix tool, end quietly when the reader of stdout goes away
    // (`cr list | head`) instead of failing on the write.
    // SAFETY: setting a signal's disposition to SIG_DFL installs no handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    cr::keep_freed_memory();
    let cli = cr::cli::Cli::parse();
    match cr::cli::dispatch(cli) {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("cr: {}", cr::cli::describe(&err));
            std::process::exit(1);
        }
    }
}
