//! `seawall-sim`: run cluster simulations from the command line.

use clap::{Parser, Subcommand};
use seawall_sim::{builtin, run, svg, Scenario};
use std::{
    fs::OpenOptions,
    io::{ErrorKind, Write as _},
    path::{Path, PathBuf},
    process::ExitCode,
};

/// Simulate client-side load balancing and resilience policies in virtual time.
#[derive(Debug, Parser)]
#[command(name = "seawall-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the built-in scenarios.
    List,
    /// Run a built-in scenario (by name) or a scenario file (TOML).
    Run {
        /// A built-in scenario name, or the path of a `.toml` scenario file.
        scenario: String,
        /// Seed for every random choice; defaults to the scenario's own.
        #[arg(long)]
        seed: Option<u64>,
        /// Write an SVG report here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Override the number of requests (for a quick look).
        #[arg(long)]
        requests: Option<u64>,
    },
}

fn load(scenario: &str) -> Result<Scenario, String> {
    if let Some(s) = builtin::by_name(scenario) {
        return Ok(s);
    }
    let text = std::fs::read_to_string(scenario).map_err(|e| {
        format!("{scenario:?} is neither a built-in scenario (see `seawall-sim list`) nor a readable file: {e}")
    })?;
    Scenario::from_toml(&text).map_err(|e| format!("{scenario}: {e}"))
}

/// Writes `text` to standard output. A reader that has gone away (`| head`) ends the output
/// quietly; any other failure is an error.
fn emit(text: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != ErrorKind::BrokenPipe => {
            Err(format!("cannot write to standard output: {e}"))
        }
        _ => Ok(()),
    }
}

/// Opens `path` for the report without changing it, so that an unwritable one is found out
/// before the run. Returns the file this made, which the report may replace and which goes again
/// if the command fails: `path`, or the file a symlink there names when that was not there yet
/// (never the symlink). A file already there is not made for the report.
fn open_report(path: &Path) -> Result<Option<PathBuf>, String> {
    let cannot = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    // `create_new` refuses any symlink, even one to a file not yet there, so symlinks are
    // followed here one at a time, each to a path of its own directory, until a file is made
    // or one is found already there. Only a file made here, never one found, is returned. Past
    // 40 (Linux's limit) the open below reports the loop.
    let mut at = path.to_path_buf();
    for _ in 0..40 {
        match OpenOptions::new().write(true).create_new(true).open(&at) {
            Ok(_) => return Ok(Some(at)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => match std::fs::read_link(&at) {
                // An absolute `to` replaces the whole path.
                Ok(to) => at = at.parent().unwrap_or(Path::new("")).join(to),
                Err(_) => break,
            },
            Err(e) => return Err(cannot(e)),
        }
    }
    OpenOptions::new().write(true).open(path).map_err(cannot)?;
    Ok(None)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::List => {
            let all = builtin::all();
            let w = all.iter().map(|s| s.name.len()).max().unwrap_or(0);
            emit(
                &all.iter()
                    .map(|s| format!("{:<w$} {}\n", s.name, s.description))
                    .collect::<String>(),
            )
        }
        Command::Run {
            scenario,
            seed,
            out,
            requests,
        } => load(&scenario).and_then(|mut s| {
            if let Some(n) = requests {
                if n == 0 {
                    return Err("--requests must be > 0".into());
                }
                s = s.with_requests(n);
            }
            let seed = seed.unwrap_or(s.seed);
            // An unwritable report is found out before the run rather than after it; the
            // report replaces the file, and a file made for it goes again if the run, the
            // table or the report fails. Only a file this command created is made for it
            // (through a symlink, the file it names, never the symlink). A file already there
            // is left as it was if the run or the table fails; if the report fails, it may
            // already have emptied or partly rewritten the file.
            let made = out.as_deref().map(open_report).transpose()?.flatten();
            // A count given here is checked as the run would check it, so an error names it.
            let checked = match requests {
                Some(n) => s
                    .validate()
                    .map_err(|e| format!("{scenario} with --requests {n}: {e}")),
                None => Ok(()),
            };
            let written = checked
                .and_then(|()| run::run(&s, seed))
                .and_then(|report| {
                    emit(&report.table())?;
                    match &out {
                        Some(path) => svg::write_svg(&report, path).map(|()| Some(path)),
                        None => Ok(None),
                    }
                });
            if let (Err(_), Some(made)) = (&written, made) {
                let _ = std::fs::remove_file(made);
            }
            match written? {
                Some(path) => emit(&format!("\nreport written to {}\n", path.display())),
                None => Ok(()),
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
