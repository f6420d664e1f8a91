//! The benchmark's child processes (the app and the proxies): started, their output kept and
//! scanned for the address they report, and ended on drop.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// A process tree killed (SIGTERM, then SIGKILL) on drop, its stdout kept.
pub struct Proc {
    name: &'static str,
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Starts `cmd`; stdout lines go to `output` (the last 200) and, until it matches once,
    /// through `find`.
    pub fn start<T: Send + 'static>(
        name: &'static str,
        mut cmd: Command,
        find: Option<fn(&str) -> Option<T>>,
    ) -> Result<(Self, Option<T>)> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().context("stdout")?) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().context("stderr")?),
        ] {
            let out = output.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let (Some(f), Some(t)) = (find, tx.as_ref())
                        && let Some(v) = f(&line)
                    {
                        let _ = t.send(v);
                        tx = None;
                    }
                    let mut o = out.lock().unwrap();
                    if o.len() >= 200 {
                        o.remove(0);
                    }
                    o.push(line);
                }
            });
        }
        drop(tx);
        let mut p = Self {
            name,
            child,
            output,
        };
        let found = match find {
            None => None,
            Some(_) => match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(v) => Some(v),
                Err(_) => {
                    let st = p.child.try_wait()?;
                    bail!(
                        "{name} did not report its address (exit: {st:?}); output:\n{}",
                        p.output()
                    );
                }
            },
        };
        Ok((p, found))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    pub fn check_running(&mut self) -> Result<()> {
        if let Some(st) = self.child.try_wait()? {
            bail!("{} exited ({st}); output:\n{}", self.name, self.output());
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
