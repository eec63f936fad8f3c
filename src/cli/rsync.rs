//! `intersync [rsync options] SRC... DEST`: parses an rsync command line
//! into a plan, carries it out, and prints what rsync would print (names
//! with `-v`, itemize lines with `-i`, `--stats`, `--progress`), exiting
//! with rsync's codes.

use std::ffi::OsString;
use std::io::Write;

use intersync::transfer::{self, Event};
use intersync_compat::ExitCode;
use intersync_compat::options::{Plan, PlanError, ProgressMode};
use intersync_compat::output;

/// Runs an rsync command line (without the program name).
pub fn main(args: &[OsString]) -> ExitCode {
    let plan = match Plan::from_args(args.iter().cloned()) {
        Ok(p) => p,
        Err(PlanError::Help(text)) => {
            print!("{text}");
            return ExitCode::Ok;
        }
        Err(e) => {
            let code = e.exit_code();
            eprintln!("intersync: {e}");
            fail(code);
            return code;
        }
    };
    let mut screen = Screen::new(&plan);
    if plan.verbose > 0 && !plan.quiet {
        screen.out("sending incremental file list");
    }
    let outcome = transfer::run(&plan, &mut |e| screen.event(e));
    screen.end(&outcome.stats);
    if outcome.exit != ExitCode::Ok {
        fail(outcome.exit);
    }
    outcome.exit
}

/// rsync's last words on failure.
fn fail(code: ExitCode) {
    eprintln!("intersync error: {} (code {})", code.meaning(), code.code());
}

/// What goes to the terminal.
struct Screen<'a> {
    plan: &'a Plan,
    stdout: std::io::StdoutLock<'static>,
    transferred: u64,
    started: std::time::Instant,
}

impl<'a> Screen<'a> {
    fn new(plan: &'a Plan) -> Screen<'a> {
        Screen {
            plan,
            stdout: std::io::stdout().lock(),
            transferred: 0,
            started: std::time::Instant::now(),
        }
    }

    fn out(&mut self, line: &str) {
        let _ = writeln!(self.stdout, "{line}");
    }

    fn names(&self) -> bool {
        !self.plan.quiet && (self.plan.verbose > 0 || self.plan.itemize > 0)
    }

    fn event(&mut self, e: Event) {
        let plan = self.plan;
        match e {
            Event::CreatedDest(text) => {
                if self.names() {
                    self.out(&text);
                }
            }
            Event::Item {
                itemize,
                name,
                target,
                changed,
                transferred,
            } => {
                if plan.quiet {
                    return;
                }
                if plan.itemize > 0 {
                    if changed || plan.itemize > 1 {
                        self.out(&output::itemize_line(&itemize, &name, target.as_deref()));
                    }
                } else if plan.verbose > 0
                    && (plan.verbose > 1
                        || (changed
                            && (!itemize.starts_with('.') || itemize[1..].starts_with('d'))))
                {
                    let line = match target {
                        Some(t) => format!("{name} -> {t}"),
                        None => name,
                    };
                    self.out(&line);
                } else if transferred && plan.progress == ProgressMode::PerFile {
                    self.out(&name);
                }
            }
            Event::Deleted(name) => {
                if plan.quiet {
                    return;
                }
                if plan.itemize > 0 {
                    self.out(&output::deleting_line(&name));
                } else if plan.verbose > 0 {
                    self.out(&format!("deleting {name}"));
                }
            }
            Event::Progress { done, size, .. } => {
                if plan.quiet || done < size {
                    return;
                }
                match plan.progress {
                    ProgressMode::None => {}
                    ProgressMode::PerFile => {
                        self.transferred += 1;
                        let secs = self.started.elapsed().as_secs_f64();
                        let line =
                            output::progress_line(size, plan.human, secs, self.transferred, (0, 0));
                        self.out(&line);
                    }
                    ProgressMode::Total => {
                        self.transferred += 1;
                        let _ = write!(
                            self.stdout,
                            "\r{:>15} files transferred: {}",
                            "", self.transferred
                        );
                    }
                }
            }
            Event::Info(text) => {
                if !plan.quiet {
                    self.out(&text);
                }
            }
            Event::Error(text) => {
                let _ = self.stdout.flush();
                eprintln!("intersync: {text}");
            }
        }
    }

    fn end(&mut self, stats: &output::Stats) {
        let plan = self.plan;
        if plan.progress == ProgressMode::Total && self.transferred > 0 {
            self.out("");
        }
        if plan.quiet {
            return;
        }
        if plan.stats {
            let block = output::stats_block(stats, plan.human);
            let _ = write!(self.stdout, "{block}");
        }
        if plan.stats || plan.verbose > 0 {
            let summary = output::summary(stats, plan.human, plan.dry_run);
            let _ = write!(self.stdout, "{summary}");
        }
        let _ = self.stdout.flush();
    }
}
