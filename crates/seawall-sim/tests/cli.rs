//! The command line reports bad input and failed output as an error, never a panic.

use std::process::{Command, Output, Stdio};

fn sim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_seawall-sim"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_clean_error(out: &Output, says: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.starts_with("error: ") && err.contains(says), "{err}");
}

#[test]
fn an_unknown_scenario_or_an_unwritable_report_is_an_error() {
    let out = sim().args(["run", "no-such-scenario"]).output().unwrap();
    assert_clean_error(&out, "neither a built-in scenario");
    let dir = std::env::temp_dir().join(format!("seawall-sim-cli-{}", std::process::id()));
    let missing = dir.join("missing").join("report.svg");
    let out = sim()
        .args(["run", "hard-down", "--requests", "100", "--out"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_clean_error(&out, "cannot write");
    // Said before the run, not after it: no table was printed.
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A run that fails leaves no empty report behind.
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("report.svg");
    let out = sim()
        .args(["run", "hard-down", "--requests", "99999999999", "--out"])
        .arg(&report)
        .output()
        .unwrap();
    // The count is named as given, with the scenario it was given to.
    assert_clean_error(
        &out,
        "error: hard-down with --requests 99999999999: load.requests must be in",
    );
    assert!(!report.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `seawall-sim run ... | head -3`: the reader leaves before the table is printed.
#[test]
fn a_reader_that_leaves_early_is_no_panic() {
    let mut child = sim()
        .args(["run", "hard-down", "--requests", "2000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end while the simulation is still running.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
}

#[cfg(target_os = "linux")]
#[test]
fn a_failed_write_to_standard_output_is_an_error() {
    for args in [&["list"][..], &["run", "hard-down", "--requests", "100"]] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let out = sim().args(args).stdout(full).output().unwrap();
        assert_clean_error(&out, "standard output");
    }
}

/// A report file made for a run goes again when the command fails after the run: here printing
/// the table, as writing the SVG may.
#[cfg(target_os = "linux")]
#[test]
fn a_failure_after_the_run_leaves_no_report_behind() {
    let dir = std::env::temp_dir().join(format!("seawall-sim-cli-after-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("report.svg");
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = sim()
        .args(["run", "hard-down", "--requests", "100", "--out"])
        .arg(&report)
        .stdout(full)
        .output()
        .unwrap();
    assert_clean_error(&out, "standard output");
    assert!(!report.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fresh directory for one test's files.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("seawall-sim-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `hard-down` writing its report to `out`: 100 requests succeed, too many fail before the
/// run starts.
fn run_to(out: &std::path::Path, requests: &str) -> Output {
    sim()
        .args(["run", "hard-down", "--requests", requests, "--out"])
        .arg(out)
        .output()
        .unwrap()
}

/// Whether `bytes` is a whole SVG document and nothing else (a newline at most after it).
fn is_svg(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    (text.starts_with("<svg") || text.starts_with("<?xml"))
        && text.strip_suffix('\n').unwrap_or(&text).ends_with("</svg>")
}

/// A report path that is a symlink to a file not yet there, in a directory that is, is written
/// through like any other path: the report goes to the symlink's target, and the symlink stays.
#[cfg(unix)]
#[test]
fn a_report_is_written_through_a_symlink_to_a_file_not_yet_there() {
    let dir = scratch("link-ok");
    std::fs::create_dir(dir.join("out")).unwrap();
    let target = dir.join("out").join("r.svg");
    let link = dir.join("report.svg");
    // Relative, as `ln -s out/r.svg report.svg` makes it.
    std::os::unix::fs::symlink("out/r.svg", &link).unwrap();
    let out = run_to(&link, "100");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(is_svg(&std::fs::read(&target).unwrap()));
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A file made through a symlink to a file not yet there goes again when the run fails; the
/// symlink, the user's, stays.
#[cfg(unix)]
#[test]
fn a_failed_run_leaves_a_symlinked_report_path_alone() {
    let dir = scratch("link-fail");
    let target = dir.join("target.svg");
    let link = dir.join("report.svg");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = run_to(&link, "99999999999");
    assert_clean_error(&out, "load.requests");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(!target.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A report file already there is the user's: a failed run leaves it byte for byte, and a report
/// replaces the whole of it, leaving nothing of a longer file behind.
#[test]
fn a_report_path_already_there_is_kept_on_failure_and_replaced_on_success() {
    let dir = scratch("existing");
    let report = dir.join("report.svg");
    let before = vec![b'x'; 1 << 20];
    std::fs::write(&report, &before).unwrap();
    let out = run_to(&report, "99999999999");
    assert_clean_error(&out, "load.requests");
    assert!(std::fs::read(&report).unwrap() == before);

    let out = run_to(&report, "100");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let after = std::fs::read(&report).unwrap();
    // Ends where the SVG does: no 'x' of the old file after it.
    assert!(is_svg(&after));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `seawall-sim list`: one scenario a line, every description starting in the same column.
#[test]
fn list_aligns_the_descriptions() {
    let out = sim().arg("list").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let columns: Vec<usize> = text
        .lines()
        .map(|line| {
            let name = line.split(' ').next().unwrap();
            line.len() - line[name.len()..].trim_start().len()
        })
        .collect();
    assert!(columns.len() >= 5, "{text}");
    assert!(columns.iter().all(|&c| c == columns[0]), "{text}");
}
