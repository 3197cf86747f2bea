//! The toolkit's own parsing of operator input: durations (`check --max-key-age`, through the
//! command line as clap parses it) and connection URLs (`redact_url`, which every message that
//! quotes a URL goes through). Never a panic; a duration that parses is what its digits and
//! unit say; redacting is idempotent, and replaces a URL's password, and only it, by `***`.
#![no_main]

use clap::Parser as _;
use encrypted_types::cli::{Command, redact_url};
use libfuzzer_sys::fuzz_target;

#[derive(clap::Parser)]
struct Top {
    #[command(subcommand)]
    command: Command,
}

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let _ = Top::try_parse_from(["t", "check", "--max-key-age", &s]);
    // The same text as a whole `90d`-style value, checked against its own reading.
    if let Some(unit @ ('d' | 'h' | 'm' | 's')) = s.chars().last() {
        let digits = &s[..s.len() - 1];
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && digits.len() < 12 {
            let n: u64 = digits.parse().unwrap_or_else(|_| std::process::abort());
            let secs = n * match unit { 'd' => 86_400, 'h' => 3_600, 'm' => 60, _ => 1 };
            match Top::try_parse_from(["t", "check", "--max-key-age", &s]) {
                Ok(_) => {}
                Err(_) if secs > 0 => std::process::abort(),
                Err(_) => {}
            }
        }
    }
    let once = redact_url(&s);
    if redact_url(&once) != once {
        std::process::abort();
    }
        // scheme://user:password@host...: the password, and only it, is replaced by the mask
    // (the user info ends at the authority's last `@`; the password after the user's `:`).
    if let Some((scheme, rest)) = s.split_once("://") {
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if let Some(at) = rest[..end].rfind('@') {
            if let Some((user, _password)) = rest[..at].split_once(':') {
                if once != format!("{scheme}://{user}:***@{}", &rest[at + 1..]) {
                    std::process::abort();
                }
            }
        }
    }
});
