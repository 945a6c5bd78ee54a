//! The commands about a test the operator runs on the cluster, read with the user's
//! kubeconfig: `murmur report NAME` (its stored report) and `murmur wait NAME` (follow it
//! to its end, exiting like `murmur run`).

use std::path::PathBuf;
use std::process::ExitCode;

use super::{conclude, progress_target, runtime, EXIT_FAILED, EXIT_INVALID};
use crate::progress::Progress;
use crate::report::baseline::Baseline;

#[derive(clap::Args, Debug)]
pub(super) struct WaitArgs {
    /// The LoadTest's name.
    pub(super) name: String,
    /// Its namespace (default: the kubeconfig's).
    #[arg(short, long)]
    pub(super) namespace: Option<String>,
    /// Give up after this long (`10m`); exit 1, the test goes on.
    #[arg(long)]
    pub(super) timeout: Option<String>,
    /// Directory for report.json and report.html (default: none written).
    #[arg(long)]
    pub(super) out: Option<PathBuf>,
    /// Also write the thresholds as JUnit XML, one test case per threshold.
    #[arg(long, value_name = "FILE")]
    pub(super) junit: Option<PathBuf>,
    /// Progress as plain lines even on a terminal.
    #[arg(long)]
    pub(super) plain: bool,
    /// Seconds between plain progress lines.
    #[arg(long, default_value_t = 5)]
    pub(super) progress_every: u64,
}

#[derive(clap::Args, Debug)]
pub(super) struct ReportArgs {
    /// The LoadTest's name.
    pub(super) name: String,
    /// Its namespace (default: the kubeconfig's).
    #[arg(short, long)]
    pub(super) namespace: Option<String>,
    /// Directory for report.json and report.html.
    #[arg(long, default_value = ".")]
    pub(super) out: PathBuf,
    /// Also write the thresholds as JUnit XML, one test case per threshold.
    #[arg(long, value_name = "FILE")]
    pub(super) junit: Option<PathBuf>,
    /// Compare with an earlier run's report.json: each step beside it in the summary
    /// (printed) and report.html, relative thresholds judged against it, and the exit
    /// code of `murmur run` (0 passed, 1 failed).
    #[arg(long, value_name = "OLD.json")]
    pub(super) baseline: Option<PathBuf>,
}

pub(super) fn report_command(args: ReportArgs) -> ExitCode {
    let baseline = match args.baseline.as_deref().map(Baseline::read).transpose() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: --baseline: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    runtime().block_on(async move {
        match crate::report::stored::write_stored_report(
            &args.name,
            args.namespace.as_deref(),
            &args.out,
            baseline.as_ref(),
        )
        .await
        {
            Ok((report, _)) if baseline.is_some() => {
                conclude(&report, Some(&args.out), args.junit.as_deref())
            }
            Ok((report, mut paths)) => {
                if let Some(f) = &args.junit {
                    if let Err(e) = crate::report::junit::write_junit(f, &report) {
                        eprintln!("error: {e}");
                        return ExitCode::from(EXIT_FAILED);
                    }
                    paths.push(f.clone());
                }
                for p in paths {
                    println!("wrote {}", p.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_FAILED)
            }
        }
    })
}

pub(super) fn wait_command(args: WaitArgs) -> ExitCode {
    use crate::wait::{follow, Followed};
    let timeout = match args
        .timeout
        .as_deref()
        .map(murmuration_crds::units::parse_duration)
        .transpose()
    {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: --timeout: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    runtime().block_on(async move {
        let mut progress = Progress::new(progress_target(args.plain, args.progress_every));
        let followed = follow(&args.name, args.namespace.as_deref(), timeout, |r| {
            progress.update(r)
        })
        .await;
        progress.finish();
        match followed {
            Ok(Followed::Finished { report, stored }) => {
                if !stored {
                    eprintln!(
                        "warning: no stored report for {} (the operator could not fetch it): \
                         the summary is the test's last status",
                        args.name
                    );
                }
                conclude(&report, args.out.as_deref(), args.junit.as_deref())
            }
            Ok(Followed::Invalid(why)) => {
                eprintln!("error: LoadTest {} is invalid: {why}", args.name);
                ExitCode::from(EXIT_INVALID)
            }
            Ok(Followed::TimedOut(after)) => {
                eprintln!(
                    "error: LoadTest {} did not finish within {} (it goes on)",
                    args.name,
                    humantime::format_duration(after)
                );
                ExitCode::from(EXIT_FAILED)
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_INVALID)
            }
        }
    })
}
