//! The Net::SMTP::Pipelining synopsis, in Rust.
//!
//! `cargo run --example synopsis -- HOST:PORT FROM TO [TO...]` pipelines one message to each
//! TO, flushes, and prints what was sent and what failed, like the Perl module's synopsis.

use std::process::ExitCode;

use pipemail::pipeliner::{Envelope, Pipeliner};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: synopsis HOST:PORT FROM TO [TO...]");
        return ExitCode::from(64);
    }
    let (host, sender, addresses) = (&args[0], &args[1], &args[2..]);
    let mut smtp = match Pipeliner::connect_plain(host) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("synopsis: {e}");
            return ExitCode::from(69);
        }
    };
    let (mut successful, mut failed) = (Vec::new(), Vec::new());
    let mut errors = Vec::new();
    for address in addresses {
        let data = format!("From: {sender}\n\nThis is a mail to {address}");
        if !smtp.pipeline(&Envelope::new(sender, [address.as_str()], data)) {
            failed.extend(smtp.rcpts_failed().iter().cloned());
            errors.extend(smtp.errors().iter().cloned());
        }
        successful.extend(smtp.rcpts_succeeded().iter().cloned());
    }
    if !smtp.flush() {
        failed.extend(smtp.rcpts_failed().iter().cloned());
        errors.extend(smtp.errors().iter().cloned());
    }
    successful.extend(smtp.rcpts_succeeded().iter().cloned());
    let _ = smtp.quit();
    println!(
        "Sent successfully to the following addresses: {}",
        successful.join(" ")
    );
    if !failed.is_empty() {
        eprintln!("Failed sending to {}", failed.join(" "));
    }
    for e in &errors {
        eprintln!(
            "An error occurred, we said {} and the server responded {} {}",
            e.command, e.code, e.message
        );
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
