//! The task shim: what keeps a task's command from outliving `sluice-worker`.
//!
//! When a worker dies (SIGKILL, OOM killer, a crash), the broker hands its
//! tasks to another worker at once, so a command still running would do
//! the same work twice. Linux can signal a process when its parent dies
//! (`PR_SET_PDEATHSIG`), but only a process that asked for it itself, and
//! asking between fork and exec takes `pre_exec`, which is `unsafe`
//! (forbidden in this workspace). So the worker runs each command through
//! itself: `sluice-worker --task-shim WORKER_PID -- CMD ARGS...`, a process
//! group leader (as the command itself used to be). The shim:
//!
//! 1. catches the signals it waits for, so none is lost or kills it early;
//! 2. asks for SIGTERM on its parent's death, then checks the parent is
//!    still the worker, which may have died before the request;
//! 3. starts CMD with its stdin, stdout, stderr and environment, in the
//!    shim's process group;
//! 4. waits: when its parent died it SIGKILLs the whole group — CMD and
//!    whatever CMD started, which is what a timeout kills too — and so dies
//!    with it; when CMD ends it ends the same way: the same exit code, or
//!    death by a signal, so the worker's view ("exit status 3", "killed by
//!    a signal") is unchanged.
//!
//! Signals are caught with handlers (tokio's), not blocked for `sigwait`:
//! a blocked mask is inherited by CMD through exec (std's `Command` does
//! not reset it), handlers are reset to the default there. The price: a
//! signal the shim catches cannot be re-raised to die of it, so a CMD
//! killed by one of those is mirrored as a SIGKILL — still "killed by a
//! signal" to the worker, which does not report which.
//!
//! Not chosen: exec-ing CMD after the prctl (the setting survives exec)
//! would keep CMD's exact status for free, but only CMD would get the
//! signal, not the children it started. A pipe whose EOF tells of the
//! worker's death would work too, but its read end has to stay open across
//! exec in the worker, so every process the worker starts holds it; the
//! prctl shares nothing.
//!
//! Linux's "parent" is the *thread* that spawned the shim: the signal also
//! comes when that thread ends and the shim passes to another thread of the
//! worker. So the signal alone proves nothing: the shim acts only when its
//! parent process is no longer the worker, and otherwise waits for the
//! signal to come again.
//!
//! Signals other than the parent's death are ignored, not forwarded: CMD
//! shares the shim's process group, so a signal sent to the group reaches
//! it directly, and a shim killed by a stray signal would leave CMD
//! unguarded.

use std::ffi::OsString;
use std::process::ExitStatus;

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Pid, getpgrp, getpid, getppid, setpgid};
use tokio::process::Command;
use tokio::signal::unix::{SignalKind, signal};

/// The hidden first argument that makes `sluice-worker` a shim.
pub const FLAG: &str = "--task-shim";

/// What a shell exits with when it cannot run a command.
const CANNOT_START: i32 = 127;

/// Runs the shim with the arguments after [`FLAG`] (`WORKER_PID -- CMD
/// ARGS...`) and exits as the command did. Never returns.
pub fn main(args: impl Iterator<Item = OsString>) -> ! {
    let (parent, program, rest) = match parse(args) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("sluice-worker {FLAG}: {e}");
            std::process::exit(2);
        }
    };
    let status = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("task shim: cannot start the runtime: {e}"))
        .and_then(|rt| rt.block_on(run(parent, &program, &rest)));
    match status {
        Ok(status) => exit_like(status),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(CANNOT_START);
        }
    }
}

fn parse(
    mut args: impl Iterator<Item = OsString>,
) -> Result<(Pid, OsString, Vec<OsString>), String> {
    let parent = args
        .next()
        .and_then(|a| a.to_str()?.parse::<i32>().ok())
        .filter(|&p| p > 0)
        .ok_or("expected the worker's pid")?;
    if args.next().as_deref() != Some("--".as_ref()) {
        return Err("expected -- before the command".into());
    }
    let program = args.next().ok_or("no command after --")?;
    Ok((Pid::from_raw(parent), program, args.collect()))
}

async fn run(parent: Pid, program: &OsString, args: &[OsString]) -> Result<ExitStatus, String> {
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("task shim: {what}: {e}");
    // The worker made us a group leader; a shim started any other way must
    // not kill its caller's group.
    if getpgrp() != getpid() {
        setpgid(Pid::from_raw(0), Pid::from_raw(0)).map_err(|e| fail("setpgid", &e))?;
    }
    // Caught before the prctl, so the parent's death is never missed.
    let mut term = signal(SignalKind::terminate()).map_err(|e| fail("SIGTERM", &e))?;
    // Caught and never read: ignored. A handler, unlike SIG_IGN, is not
    // inherited by CMD.
    let mut ignored = Vec::new();
    for kind in [
        SignalKind::interrupt(),
        SignalKind::hangup(),
        SignalKind::quit(),
        SignalKind::user_defined1(),
        SignalKind::user_defined2(),
        SignalKind::alarm(),
    ] {
        ignored.push(signal(kind).map_err(|e| fail("signal", &e))?);
    }
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(|e| fail("prctl", &e))?;
    if getppid() != parent {
        return Err("task shim: the worker is gone; not starting the command".into());
    }
    let mut child = Command::new(program)
        .args(args)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.to_string_lossy()))?;
    loop {
        tokio::select! {
            status = child.wait() => return status.map_err(|e| fail("waiting for the command", &e)),
            _ = term.recv() => {
                if getppid() != parent {
                    let _ = killpg(getpgrp(), Signal::SIGKILL);
                    // Not reached: the group includes the shim.
                    std::process::exit(128 + Signal::SIGKILL as i32);
                }
            }
        }
    }
}

/// Exits with the command's code, or dies of the signal that killed it.
fn exit_like(status: ExitStatus) -> ! {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        std::process::exit(code);
    }
    if let Some(sig) = status.signal().and_then(|s| Signal::try_from(s).ok()) {
        // The command dumped its core already, if it was to; a second core,
        // the shim's, would only mislead.
        if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_CORE) {
            let _ = setrlimit(Resource::RLIMIT_CORE, 0, hard);
        }
        let _ = kill(getpid(), sig);
    }
    // Still here: a signal the shim catches (see `run`) or ignores (Rust
    // ignores SIGPIPE). A signal death is what the worker must see.
    let _ = kill(getpid(), Signal::SIGKILL);
    std::process::exit(128 + Signal::SIGKILL as i32);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> impl Iterator<Item = OsString> {
        a.iter().map(OsString::from).collect::<Vec<_>>().into_iter()
    }

    #[test]
    fn parses_pid_and_command() {
        let (pid, program, rest) = parse(args(&["42", "--", "sh", "-c", "x"])).expect("valid");
        assert_eq!(pid, Pid::from_raw(42));
        assert_eq!(program, "sh");
        assert_eq!(rest, ["-c", "x"]);
    }

    #[test]
    fn bad_arguments_are_one_line_errors() {
        assert!(parse(args(&[])).is_err());
        assert!(parse(args(&["x", "--", "sh"])).is_err());
        assert!(parse(args(&["0", "--", "sh"])).is_err());
        assert!(parse(args(&["42", "sh"])).is_err());
        assert!(parse(args(&["42", "--"])).is_err());
    }
}
