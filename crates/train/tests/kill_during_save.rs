//! Kill during save: a child process (this test binary re-run on [`child`]) trains the tiny
//! model and writes a checkpoint after every step, pruning to the last [`KEEP`]; the parent
//! SIGKILLs it at different moments of the save / prune / step cycle and checks after each
//! kill that
//! - every checkpoint folder under its final name is complete (exactly the four files) and
//!   loads with `Trainer::resume`, and its LoRA reads with `read_lora` and passes `self_check`;
//! - the newest complete checkpoint is at least the last one the child reported saved;
//! - leftovers of the interrupted save (dot-named `.partial` folders, `.tmp-` files) are
//!   never listed as checkpoints, so they cannot shadow a complete one;
//! - the next child resumes from the newest complete checkpoint and keeps training.
//!
//! At the end a trainer in this process resumes from the newest checkpoint and saves one more.

use crate::common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use common::*;
use fluxlora_train::save::{list_checkpoints, prune_checkpoints};
use fluxlora_train::{self_check, TrainConfig, Trainer};

/// Set (to the output folder) only in the child process.
const CHILD_ENV: &str = "FLUXLORA_KILL_CHILD";
/// Prefix of the child's progress lines on stdout.
const TAG: &str = "kill-child:";
/// Checkpoints the child keeps (as `save_last_n_saves` would).
const KEEP: usize = 2;
/// The four files of a complete checkpoint folder (LoRA named after `output_name` "tiny").
const CHECKPOINT_FILES: [&str; 4] = [
    "config.toml",
    "optimizer.safetensors",
    "state.json",
    "tiny.safetensors",
];
/// The child gives up after this long, so a parent that died early leaves no runaway process.
const CHILD_LIFETIME: Duration = Duration::from_secs(60);
/// How long the parent waits for any one line of the child.
const LINE_TIMEOUT: Duration = Duration::from_secs(30);

/// Rank 64 on the tiny model: a LoRA of ~0.5 MB plus ~1 MB of AdamW moments, so a save takes
/// milliseconds and the kills land inside it.
fn config(out: &Path) -> TrainConfig {
    TrainConfig {
        network_dim: 64,
        network_alpha: 32.0,
        ..tiny_train_config(out, 1_000_000)
    }
}

/// The child's loop; does nothing unless [`CHILD_ENV`] is set, so it passes as a normal test.
#[test]
fn child() {
    let Some(out) = std::env::var_os(CHILD_ENV).map(PathBuf::from) else {
        return;
    };
    let born = Instant::now();
    let mut t = Trainer::new(config(&out), tiny_flux(7), Default::default())
        .unwrap()
        .with_progress(false);
    let mut src = RandomBatches::new(7);
    let newest = list_checkpoints(&out, "tiny").unwrap().pop();
    match newest {
        Some((_, dir)) => println!("{TAG} resumed {}", t.resume(&dir, &mut src).unwrap().step),
        None => println!("{TAG} fresh"),
    }
    while born.elapsed() < CHILD_LIFETIME {
        t.step_once(&mut src).unwrap();
        println!("{TAG} saving {}", t.step());
        t.save_checkpoint(&src).unwrap();
        println!("{TAG} saved {}", t.step());
        prune_checkpoints(&out, "tiny", KEEP, &[]).unwrap();
        println!("{TAG} pruned {}", t.step());
    }
}

/// One progress line of the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Fresh,
    Resumed(u64),
    Saving(u64),
    Saved(u64),
    Pruned(u64),
}

/// The harness prints `test kill_during_save::child ... ` without a newline before the test
/// runs, so the first tag may sit mid-line.
fn parse(line: &str) -> Option<Event> {
    let rest = line[line.find(TAG)? + TAG.len()..].trim();
    let (word, num) = rest.split_once(' ').unwrap_or((rest, ""));
    let n = || num.parse::<u64>().ok();
    Some(match word {
        "fresh" => Event::Fresh,
        "resumed" => Event::Resumed(n()?),
        "saving" => Event::Saving(n()?),
        "saved" => Event::Saved(n()?),
        "pruned" => Event::Pruned(n()?),
        _ => return None,
    })
}

/// The running child; killed on drop so a failing assertion leaves no process behind.
struct ChildRun {
    child: Child,
    events: Receiver<Event>,
    stderr: std::thread::JoinHandle<String>,
}

impl ChildRun {
    fn spawn(out: &Path) -> Self {
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(exe)
            .args([
                "kill_during_save::child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, out)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, events) = channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(e) = parse(&line) {
                    if tx.send(e).is_err() {
                        break;
                    }
                }
            }
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Self {
            child,
            events,
            stderr,
        }
    }

    /// The next event, or a panic with the child's stderr when it died or hung.
    fn next(&mut self) -> Event {
        match self.events.recv_timeout(LINE_TIMEOUT) {
            Ok(e) => e,
            Err(RecvTimeoutError::Timeout) => {
                panic!("the child printed nothing for {LINE_TIMEOUT:?}")
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait().unwrap();
                let stderr = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new));
                panic!(
                    "the child ended early ({status}); its stderr:\n{}",
                    stderr.join().unwrap_or_default()
                );
            }
        }
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ChildRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where in the cycle a round kills the child: at the first `trigger` line after `saves`
/// completed saves of this run, then `delay` later.
#[derive(Debug, Clone, Copy)]
struct KillPoint {
    saves: usize,
    trigger: fn(Event) -> bool,
    delay: Duration,
    name: &'static str,
}

const fn at(
    saves: usize,
    name: &'static str,
    trigger: fn(Event) -> bool,
    micros: u64,
) -> KillPoint {
    KillPoint {
        saves,
        trigger,
        delay: Duration::from_micros(micros),
        name,
    }
}

fn is_saving(e: Event) -> bool {
    matches!(e, Event::Saving(_))
}
fn is_saved(e: Event) -> bool {
    matches!(e, Event::Saved(_))
}
fn is_pruned(e: Event) -> bool {
    matches!(e, Event::Pruned(_))
}

/// Runs a child until the kill point; returns the step it resumed from (0 when fresh) and the
/// last step it reported saved.
fn run_and_kill(out: &Path, point: KillPoint) -> (u64, u64) {
    let mut run = ChildRun::spawn(out);
    let resumed = match run.next() {
        Event::Fresh => 0,
        Event::Resumed(s) => s,
        e => panic!("the child's first line is {e:?}"),
    };
    let (mut saves, mut last_saved) = (0, resumed);
    loop {
        let e = run.next();
        if let Event::Saved(s) = e {
            saves += 1;
            last_saved = s;
        }
        if saves >= point.saves && (point.trigger)(e) {
            break;
        }
    }
    if !point.delay.is_zero() {
        std::thread::sleep(point.delay);
    }
    run.kill();
    // Lines printed between the trigger and the kill may still sit in the pipe; ChildRun's
    // reader thread is gone with its receiver, so `last_saved` is a lower bound, as intended.
    (resumed, last_saved)
}

/// Checks the folder after a kill; returns the newest complete step.
fn check_after_kill(out: &Path, last_saved: u64, round: &str) -> u64 {
    let listed = list_checkpoints(out, "tiny").unwrap();
    let newest = listed
        .last()
        .map(|c| c.0)
        .unwrap_or_else(|| panic!("{round}: no complete checkpoint left"));
    assert!(
        newest >= last_saved,
        "{round}: newest complete checkpoint is step {newest}, the child had saved {last_saved}"
    );

    // Everything in the folder is a listed checkpoint, the run's files, or a dot-named leftover
    // that list_checkpoints ignores.
    for entry in std::fs::read_dir(out).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        let known = listed
            .iter()
            .any(|(_, p)| p.file_name().unwrap().to_string_lossy() == name);
        assert!(
            known || name.starts_with('.') || name == "tiny-config.toml" || name == "tiny-log.csv",
            "{round}: unexpected `{name}` in the output folder"
        );
    }

    let _g = backend_rng_lock();
    for (step, dir) in &listed {
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        files.sort();
        assert_eq!(
            files,
            CHECKPOINT_FILES,
            "{round}: {} is not a complete checkpoint",
            dir.display()
        );
        let lora = dir.join("tiny.safetensors");
        let (weights, _) = fluxlora_io::read_lora(&lora).unwrap_or_else(|e| panic!("{round}: {e}"));
        assert_eq!(weights.len(), 13, "{round}: {}", lora.display());
        let mut t = Trainer::new(config(out), tiny_flux(7), Default::default())
            .unwrap()
            .with_progress(false);
        let state = t
            .resume(dir, &mut RandomBatches::new(7))
            .unwrap_or_else(|e| panic!("{round}: {e}"));
        assert_eq!(state.step, *step, "{round}: {}", dir.display());
        let check = self_check(t.model_mut(), &lora).unwrap_or_else(|e| panic!("{round}: {e}"));
        assert_eq!(check.modules, 13);
    }
    newest
}

#[test]
fn a_kill_during_save_leaves_the_previous_checkpoint_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let points = [
        at(1, "right after `saving`", is_saving, 0),
        at(2, "300 µs into a save", is_saving, 300),
        at(1, "2 ms into a save", is_saving, 2_000),
        at(2, "right after `saved` (during prune)", is_saved, 0),
        at(1, "100 µs after `saved` (during prune)", is_saved, 100),
        at(1, "5 ms into a save", is_saving, 5_000),
        at(1, "right after `pruned` (during the step)", is_pruned, 0),
        at(3, "1 ms into a save", is_saving, 1_000),
    ];
    let mut newest = 0;
    let mut leftovers = 0;
    for (i, point) in points.iter().enumerate() {
        let round = format!("round {i} ({})", point.name);
        let (resumed, last_saved) = run_and_kill(&out, *point);
        assert_eq!(
            resumed, newest,
            "{round}: the child must resume from the newest complete checkpoint"
        );
        let now = check_after_kill(&out, last_saved, &round);
        assert!(
            now >= newest && now > resumed,
            "{round}: no progress (newest {now}, resumed from {resumed})"
        );
        newest = now;
        leftovers += std::fs::read_dir(&out)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with('.')
            })
            .count();
    }
    eprintln!(
        "kill_during_save: {} rounds, newest step {newest}, {leftovers} leftover(s) seen after \
         kills",
        points.len()
    );

    // A fresh run resumes from the newest complete checkpoint and continues.
    let _g = backend_rng_lock();
    let (step, dir) = list_checkpoints(&out, "tiny").unwrap().pop().unwrap();
    let mut t = Trainer::new(config(&out), tiny_flux(7), Default::default())
        .unwrap()
        .with_progress(false);
    let mut src = RandomBatches::new(7);
    assert_eq!(t.resume(&dir, &mut src).unwrap().step, step);
    assert!(t.step_once(&mut src).unwrap().loss.is_finite());
    let next = t.save_checkpoint(&src).unwrap();
    assert_eq!(
        list_checkpoints(&out, "tiny").unwrap().pop().unwrap(),
        (step + 1, next.clone())
    );
    // Saving the same step again replaces the folder and leaves nothing aside.
    let again = t.save_checkpoint(&src).unwrap();
    assert_eq!(again, next);
    let mut t2 = Trainer::new(config(&out), tiny_flux(7), Default::default())
        .unwrap()
        .with_progress(false);
    assert_eq!(
        t2.resume(&again, &mut RandomBatches::new(7)).unwrap().step,
        step + 1
    );
    let hidden: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.contains(&format!("step{:08}", step + 1)) && n.starts_with('.'))
        .collect();
    assert!(
        hidden.is_empty(),
        "left beside the replaced checkpoint: {hidden:?}"
    );
}
