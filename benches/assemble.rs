//! Benchmarks of `slimforge assemble` against one loopback registry (CNCF
//! Distribution), side by side with buildah and skopeo + umoci, plus the
//! layer writer's throughput and the assembler's peak memory.
//!
//! Run with `cargo bench --bench assemble`; pass section names to run only
//! some of them (`cargo bench --bench assemble -- seed layer`): `seed`,
//! `golang`, `layer`, `memory`. `SLIMFORGE_BENCH_RUNS=N` changes the number
//! of runs of the cheap measurements (default 7). The markdown report goes
//! to stdout and to `target/bench-results/assemble.md`; progress to stderr.
//!
//! What is compared (see BENCHMARKS.md for the figures):
//! - seed: busybox base + the seed app at `/app` + `cmd ["/app"]`, pushed:
//!   slimforge into a fresh repository (base blob mounted, app layer
//!   uploaded) and into one repository again (every blob already there);
//!   buildah with the base already in its storage (warm) and without (cold);
//!   umoci on a local OCI layout holding the base, then `skopeo copy`.
//! - golang: the same onto the ~600 MB Go builder base: slimforge, and
//!   buildah cold for contrast.
//! - layer: `LayerWriter` on a ~200 MB deterministic tree vs tar | pigz,
//!   tar | gzip, tar | zstd; two runs must give the same digest.
//! - memory: peak RSS of `slimforge assemble` adding a ~500 MB file onto
//!   scratch, pushed.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use slimforge::oci::layer::{LayerOptions, LayerSource, LayerWriter};
use support::{Format, Registry};

const SLIMFORGE: &str = env!("CARGO_BIN_EXE_slimforge");
/// Bump when the generated data changes.
const DATA_VERSION: &str = "v1";
const MB: f64 = 1_000_000.0;

fn main() {
    let sections: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |name: &str| sections.is_empty() || sections.iter().any(|s| s == name);
    let runs: usize = std::env::var("SLIMFORGE_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(7);

    let started = Instant::now();
    let load_at_start = load_average();
    let bench = Bench::new(runs);
    let mut report = Report::default();
    writeln!(
        report.text,
        "# slimforge assemble benchmarks\n\n{}\n",
        machine_line()
    )
    .unwrap();
    if wanted("seed") {
        bench.seed_on_busybox(&mut report);
    }
    if wanted("golang") {
        bench.seed_on_golang(&mut report);
    }
    if wanted("layer") {
        bench.layer_throughput(&mut report);
    }
    if wanted("memory") {
        bench.memory(&mut report);
    }
    writeln!(
        report.text,
        "Load average (1 min) at start: {load_at_start}; at the end: {}. Other work on the \
         machine shows up as noise in every figure.\n",
        load_average()
    )
    .unwrap();
    report.finish(started.elapsed());
    bench.buildah.reset();
}

// ---------------------------------------------------------------------------
// Timing and the report

/// Wall-clock samples of one measured thing.
struct Samples(Vec<Duration>);

impl Samples {
    fn sorted(&self) -> Vec<Duration> {
        let mut v = self.0.clone();
        v.sort();
        v
    }
    fn median(&self) -> Duration {
        let v = self.sorted();
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2
        }
    }
    fn min(&self) -> Duration {
        self.sorted()[0]
    }
    fn max(&self) -> Duration {
        *self.sorted().last().expect("at least one sample")
    }
}

fn fmt_duration(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

#[derive(Default)]
struct Report {
    text: String,
    targets: Vec<String>,
}

impl Report {
    fn section(&mut self, title: &str, intro: &str) {
        writeln!(self.text, "## {title}\n\n{intro}\n").unwrap();
    }

    fn target(&mut self, line: String) {
        eprintln!("target: {line}");
        self.targets.push(line);
    }

    fn finish(mut self, elapsed: Duration) {
        if !self.targets.is_empty() {
            self.text.push_str("## Targets\n\n");
            for t in &self.targets {
                writeln!(self.text, "- {t}").unwrap();
            }
            self.text.push('\n');
        }
        writeln!(
            self.text,
            "Whole benchmark: {:.0} s.",
            elapsed.as_secs_f64()
        )
        .unwrap();
        println!("\n{}", self.text);
        let dir = support::target_dir().join("bench-results");
        fs::create_dir_all(&dir).expect("create target/bench-results");
        fs::write(dir.join("assemble.md"), &self.text).expect("write the report");
        eprintln!("report written to {}", dir.join("assemble.md").display());
    }
}

/// One row of a timing table.
fn timing_row(name: &str, samples: &Samples, extra: &[String]) -> String {
    let mut row = format!(
        "| {name} | {} | {} | {} | {} |",
        samples.0.len(),
        fmt_duration(samples.median()),
        fmt_duration(samples.min()),
        fmt_duration(samples.max()),
    );
    for e in extra {
        write!(row, " {e} |").unwrap();
    }
    row
}

/// This process's resident set (VmRSS) in KiB.
fn resident_kib() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse().ok())
        })
        .unwrap_or(0)
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn machine_line() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(std::num::NonZero::get)
        .unwrap_or(1);
    let mem_gib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    format!(
        "Machine: {cores} cores ({cpu}), {mem_gib:.0} GiB RAM; one CNCF Distribution registry \
         on 127.0.0.1 (filesystem storage); times are wall clock per run, median (min–max)."
    )
}

// ---------------------------------------------------------------------------
// slimforge runs

/// What one `slimforge assemble` run gave.
struct SlimRun {
    wall: Duration,
    result: Value,
    /// Log messages (first occurrence) and when they were logged, from the
    /// moment the process was started.
    events: BTreeMap<String, Duration>,
    stderr: String,
    /// Peak RSS in KiB, when run under /usr/bin/time.
    peak_rss_kib: Option<u64>,
}

fn write_spec(dir: &Path, spec: &Value) -> PathBuf {
    let path = dir.join("spec.json");
    fs::write(&path, serde_json::to_vec_pretty(spec).unwrap()).expect("write spec");
    path
}

/// Runs `slimforge assemble` on `spec` with `SLIMFORGE_LOG=log`; panics on
/// failure. With `measure_rss`, runs under `/usr/bin/time -f %M`.
fn slimforge(spec: &Value, work: &Path, log: &str, measure_rss: bool) -> SlimRun {
    let spec_path = write_spec(work, spec);
    let result_path = work.join("result.json");
    let time_path = work.join("time.txt");
    let _ = fs::remove_file(&result_path);
    let mut cmd = if measure_rss {
        let mut c = Command::new("/usr/bin/time");
        c.arg("-f")
            .arg("%M")
            .arg("-o")
            .arg(&time_path)
            .arg(SLIMFORGE);
        c
    } else {
        Command::new(SLIMFORGE)
    };
    cmd.arg("assemble")
        .arg("--spec")
        .arg(&spec_path)
        .arg("--result")
        .arg(&result_path)
        .env("SLIMFORGE_LOG", log)
        .stdin(Stdio::null());
    let wall_start = SystemTime::now();
    let start = Instant::now();
    let out = cmd.output().expect("start slimforge");
    let wall = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "slimforge assemble failed ({}):\n{stderr}",
        out.status
    );
    let result: Value =
        serde_json::from_slice(&fs::read(&result_path).expect("result file")).expect("result");
    let peak_rss_kib = measure_rss.then(|| {
        fs::read_to_string(&time_path)
            .expect("/usr/bin/time output")
            .lines()
            .rev()
            .find_map(|l| l.trim().parse().ok())
            .expect("peak RSS from /usr/bin/time")
    });
    SlimRun {
        wall,
        result,
        events: log_events(&stderr, wall_start),
        stderr,
        peak_rss_kib,
    }
}

/// `2026-01-01T00:00:00.123456Z  INFO slimforge::assemble: layer written layer=0 …`
/// → ("layer written", time since `start`).
fn log_events(stderr: &str, start: SystemTime) -> BTreeMap<String, Duration> {
    let mut events = BTreeMap::new();
    for (line, at) in log_lines(stderr, start) {
        events.entry(event_name(&line)).or_insert(at);
    }
    events
}

fn log_lines(stderr: &str, start: SystemTime) -> Vec<(String, Duration)> {
    let start = jiff::Timestamp::try_from(start).expect("system time");
    stderr
        .lines()
        .filter_map(|line| {
            let (stamp, rest) = line.split_once(' ')?;
            let at: jiff::Timestamp = stamp.parse().ok()?;
            let offset = at.duration_since(start);
            let offset = Duration::try_from(offset).unwrap_or_default();
            Some((rest.trim().to_string(), offset))
        })
        .collect()
}

/// The message of a log line: after the target, before the first `key=`.
fn event_name(line: &str) -> String {
    let message = line.split_once(": ").map(|(_, m)| m).unwrap_or(line);
    message
        .split(' ')
        .take_while(|w| !w.contains('='))
        .collect::<Vec<_>>()
        .join(" ")
}

fn seed_spec(base: &str, app: &Path, target: &str) -> Value {
    json!({
        "base": base,
        "layers": [{"source": app, "destination": "/app"}],
        "config": {"cmd": ["/app"]},
        "target": target,
        "insecure": true,
    })
}

/// The pushed image has `layers` layers and runs `/app`.
fn check_image(reference: &str, layers: usize) {
    let inspected = support::skopeo_inspect(reference);
    let found = inspected["Layers"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(found, layers, "{reference}: layers {inspected:#}");
    let config = support::skopeo_inspect_config(reference);
    assert_eq!(config["config"]["Cmd"], json!(["/app"]), "{reference}: cmd");
}

// ---------------------------------------------------------------------------
// buildah in a storage of its own, so "cold" really is cold: the test
// suite's storage shares layers between images from many registries.

struct Buildah {
    root: PathBuf,
    runroot: PathBuf,
}

impl Buildah {
    fn new(bench_dir: &Path) -> Self {
        use sha2::Digest as _;
        let root = bench_dir.join("containers-storage");
        let hash = hex::encode(sha2::Sha256::digest(root.display().to_string()));
        let runroot = PathBuf::from(format!("/run/slimforge-bench/{}", &hash[..12]));
        // Run state must not outlive a reboot (/run is not tmpfs here).
        let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let boot_file = bench_dir.join("containers-boot-id");
        if fs::read_to_string(&boot_file).unwrap_or_default() != boot_id {
            let _ = fs::remove_dir_all(&runroot);
            fs::create_dir_all(bench_dir).expect("bench dir");
            fs::write(&boot_file, &boot_id).expect("write boot id");
        }
        fs::create_dir_all(&root).expect("buildah root");
        fs::create_dir_all(&runroot).expect("buildah runroot");
        Buildah { root, runroot }
    }

    fn cmd(&self) -> Command {
        let mut cmd = container_tool("buildah");
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot);
        cmd
    }

    fn run(&self, args: &[&str]) -> String {
        let out = support::run_ok(self.cmd().args(args));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// No containers, no images.
    fn reset(&self) {
        let _ = support::run_any(self.cmd().args(["rm", "--all"]));
        let _ = support::run_any(self.cmd().args(["rmi", "--all", "--force"]));
    }

    /// from, copy, config, commit, push: the seed final stage. Returns the
    /// pushed reference and leaves nothing behind (cleanup untimed).
    fn seed_stage(&self, base: &str, app: &Path, local: &str, target: &str) -> (Duration, String) {
        let start = Instant::now();
        let ctr = self.run(&[
            "from",
            "--pull=false",
            "--quiet",
            "--tls-verify=false",
            base,
        ]);
        self.run(&["copy", "--quiet", &ctr, &app.display().to_string(), "/app"]);
        self.run(&["config", "--cmd", r#"["/app"]"#, &ctr]);
        self.run(&["commit", "--quiet", "--format", "docker", &ctr, local]);
        self.run(&[
            "push",
            "--quiet",
            "--tls-verify=false",
            local,
            &format!("docker://{target}"),
        ]);
        let wall = start.elapsed();
        self.run(&["rm", &ctr]);
        self.run(&["rmi", local]);
        (wall, target.to_string())
    }
}

// ---------------------------------------------------------------------------
// skopeo + umoci

/// `program` (buildah, skopeo) with the test harness's containers configuration.
fn container_tool(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.envs(support::podman_env());
    cmd
}

fn run_tool(program: &str, args: &[&str]) -> Output {
    let mut cmd = if program == "skopeo" {
        container_tool(program)
    } else {
        Command::new(program)
    };
    support::run_ok(cmd.args(args))
}

/// umoci insert + umoci config on a layout that holds the base as `base`,
/// then skopeo copy to the registry.
fn umoci_seed_stage(layout: &Path, app: &Path, tag: &str, target: &str) -> Duration {
    let layout = layout.display().to_string();
    let start = Instant::now();
    run_tool(
        "umoci",
        &[
            "insert",
            "--image",
            &format!("{layout}:base"),
            "--tag",
            tag,
            &app.display().to_string(),
            "/app",
        ],
    );
    run_tool(
        "umoci",
        &[
            "config",
            "--image",
            &format!("{layout}:{tag}"),
            "--config.cmd",
            "/app",
        ],
    );
    run_tool(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            &format!("oci:{layout}:{tag}"),
            &format!("docker://{target}"),
        ],
    );
    start.elapsed()
}

// ---------------------------------------------------------------------------
// The benchmarks

struct Bench {
    runs: usize,
    dir: PathBuf,
    registry: Registry,
    buildah: Buildah,
    app: PathBuf,
    /// slimforge's median on busybox (fresh repository), for the golang target.
    seed_reference: std::cell::OnceCell<Duration>,
}

impl Bench {
    fn new(runs: usize) -> Self {
        let dir = support::target_dir().join("bench-data");
        fs::create_dir_all(&dir).expect("create target/bench-data");
        eprintln!("starting the registry; binary under test: {SLIMFORGE}");
        let registry = Registry::start();
        let buildah = Buildah::new(&dir);
        buildah.reset();
        let app = support::seed_app();
        Bench {
            runs,
            dir,
            registry,
            buildah,
            app,
            seed_reference: std::cell::OnceCell::new(),
        }
    }

    fn work_dir(&self, name: &str) -> PathBuf {
        let dir = self.dir.join("work").join(name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create work dir");
        dir
    }

    /// a. The seed final stage on busybox, slimforge vs buildah vs umoci.
    fn seed_on_busybox(&self, report: &mut Report) {
        eprintln!("== seed: pushing the busybox base");
        let reg = &self.registry;
        let base = support::push_busybox(reg, "busybox", Format::Docker);
        let work = self.work_dir("seed");
        let app = &self.app;

        // Warm-ups (untimed): the binary and page cache, a first push into
        // the "repeat" repository, buildah's copy of the base, the OCI layout.
        let warm = slimforge(
            &seed_spec(&base, app, &reg.image("sf-repeat", "warmup")),
            &work,
            "info",
            false,
        );
        check_image(warm.result["reference"].as_str().unwrap(), 2);
        self.buildah
            .run(&["pull", "--quiet", "--tls-verify=false", &base]);
        let layout = work.join("oci-layout");
        run_tool(
            "skopeo",
            &[
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                &format!("docker://{base}"),
                &format!("oci:{}:base", layout.display()),
            ],
        );
        // buildah and umoci pushes into a repository they pushed to before.
        self.buildah.seed_stage(
            &base,
            app,
            "localhost/bench-warmup",
            &reg.image("buildah-repeat", "warmup"),
        );
        umoci_seed_stage(&layout, app, "warmup", &reg.image("umoci-repeat", "warmup"));

        let names = [
            "slimforge, fresh repository",
            "slimforge, repeat push",
            "buildah warm, fresh repository",
            "buildah warm, repeat push",
            "buildah cold, fresh repository",
            "skopeo + umoci (warm layout), fresh repository",
            "skopeo + umoci (warm layout), repeat push",
        ];
        let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); names.len()];
        let mut slim_events: Vec<BTreeMap<String, Duration>> = Vec::new();
        let runs = self.runs.max(5);
        let peer_runs = 5;
        // Round robin, so drift and other load on the machine hit every tool alike.
        for round in 0..runs {
            eprintln!("== seed: round {}/{runs}", round + 1);
            let run = slimforge(
                &seed_spec(&base, app, &reg.image(&format!("sf-fresh-{round}"), "v1")),
                &work,
                "info",
                false,
            );
            samples[0].push(run.wall);
            slim_events.push(run.events);
            if round == 0 {
                check_image(run.result["reference"].as_str().unwrap(), 2);
            }
            let run = slimforge(
                &seed_spec(&base, app, &reg.image("sf-repeat", &format!("v{round}"))),
                &work,
                "info",
                false,
            );
            samples[1].push(run.wall);
            if round >= peer_runs {
                continue;
            }
            let (wall, pushed) = self.buildah.seed_stage(
                &base,
                app,
                &format!("localhost/bench-warm-{round}"),
                &reg.image(&format!("buildah-warm-{round}"), "v1"),
            );
            samples[2].push(wall);
            if round == 0 {
                check_image(&pushed, 2);
            }
            let (wall, _) = self.buildah.seed_stage(
                &base,
                app,
                &format!("localhost/bench-warm-r{round}"),
                &reg.image("buildah-repeat", &format!("v{round}")),
            );
            samples[3].push(wall);
            // Cold: the base leaves local storage first (untimed).
            self.buildah.reset();
            let (wall, _) = self.buildah.seed_stage(
                &base,
                app,
                &format!("localhost/bench-cold-{round}"),
                &reg.image(&format!("buildah-cold-{round}"), "v1"),
            );
            samples[4].push(wall);
            let target = reg.image(&format!("umoci-{round}"), "v1");
            samples[5].push(umoci_seed_stage(
                &layout,
                app,
                &format!("fresh{round}"),
                &target,
            ));
            if round == 0 {
                check_image(&target, 2);
            }
            samples[6].push(umoci_seed_stage(
                &layout,
                app,
                &format!("repeat{round}"),
                &reg.image("umoci-repeat", &format!("v{round}")),
            ));
        }
        let samples: Vec<Samples> = samples.into_iter().map(Samples).collect();
        let reference = samples[0].median();

        let rss = slimforge(
            &seed_spec(&base, app, &reg.image("sf-rss", "v1")),
            &work,
            "info",
            true,
        )
        .peak_rss_kib
        .unwrap_or(0);
        report.section(
            "a. Seed final stage on busybox (~1.1 MB base, 1.9 MB app)",
            &format!(
                "busybox base (Docker media types, one layer) + the seed app at `/app` + \
                 `cmd [\"/app\"]`, assembled and pushed. *Fresh repository*: every run pushes to a \
                 new repository, so the base blob has to be mounted (or copied) and the app layer \
                 uploaded, as for a first build of an image; *repeat push*: a new tag in a \
                 repository that already holds every blob, as for a rebuild that changed nothing. \
                 Warm = the base is already in the tool's local store (buildah storage / OCI \
                 layout); buildah cold removes every local image first (untimed) and pulls. \
                 Each buildah run is `from --pull=false`, `copy`, `config --cmd`, `commit \
                 --format docker`, `push`; each umoci run is `umoci insert --tag`, `umoci config \
                 --config.cmd`, `skopeo copy oci:… docker://…`. Peak RSS of one slimforge run: \
                 {:.1} MB.",
                rss as f64 * 1024.0 / MB
            ),
        );
        report
            .text
            .push_str("| tool, scenario | runs | median | min | max | median vs slimforge fresh |\n|---|---|---|---|---|---|\n");
        for (name, s) in names.iter().zip(&samples) {
            let row = timing_row(name, s, &[format!("{:.1}×", ratio(s.median(), reference))]);
            report.text.push_str(&row);
            report.text.push('\n');
        }
        report.text.push('\n');
        phase_table(
            report,
            "slimforge, fresh repository",
            &slim_events,
            reference,
        );
        self.debug_timeline(
            report,
            &seed_spec(&base, app, &reg.image("sf-debug", "v1")),
            &work,
        );
        self.seed_diagnostics(report, &base, &layout, &work);

        let warm_ratio = ratio(samples[2].median(), reference);
        report.target(format!(
            "slimforge ≥ 5× faster than buildah warm (fresh repository): {warm_ratio:.1}× → {}",
            met(warm_ratio >= 5.0)
        ));
        let repeat_ratio = ratio(samples[3].median(), samples[1].median());
        report.target(format!(
            "(same, repeat push: buildah warm / slimforge = {repeat_ratio:.1}× → {})",
            met(repeat_ratio >= 5.0)
        ));
        let umoci_ratio = ratio(samples[5].median(), reference);
        report.target(format!(
            "slimforge faster than skopeo + umoci (fresh repository): {umoci_ratio:.1}× → {}",
            met(umoci_ratio > 1.0)
        ));
        self.buildah.reset();
        self.seed_reference
            .set(reference)
            .expect("seed measured once");
    }

    /// Fixed costs behind the seed figures: HTTP requests per run, process
    /// start, the first image-reference parse, one registry round trip.
    fn seed_diagnostics(&self, report: &mut Report, base: &str, layout: &Path, work: &Path) {
        let reg = &self.registry;
        let app = &self.app;
        let count = |run: &dyn Fn()| -> (usize, usize) {
            let before = reg.requests().len();
            run();
            // The access log is written as requests finish.
            std::thread::sleep(Duration::from_millis(300));
            let during = reg.requests()[before..].to_vec();
            let pings = during.iter().filter(|r| r.as_str() == "GET /v2/").count();
            (during.len(), pings)
        };
        let slim = count(&|| {
            slimforge(
                &seed_spec(base, app, &reg.image("sf-count", "v1")),
                work,
                "info",
                false,
            );
        });
        let slim_repeat = count(&|| {
            slimforge(
                &seed_spec(base, app, &reg.image("sf-repeat", "count")),
                work,
                "info",
                false,
            );
        });
        let buildah = count(&|| {
            self.buildah.seed_stage(
                base,
                app,
                "localhost/bench-count",
                &reg.image("buildah-count", "v1"),
            );
        });
        let umoci = count(&|| {
            umoci_seed_stage(layout, app, "count", &reg.image("umoci-count", "v1"));
        });

        let version = Samples(
            (0..self.runs.max(5))
                .map(|_| {
                    let start = Instant::now();
                    support::run_ok(Command::new(SLIMFORGE).arg("--version"));
                    start.elapsed()
                })
                .collect(),
        );
        // This process has not parsed an image reference yet.
        let rss_before = resident_kib();
        let start = Instant::now();
        slimforge::oci::registry::parse_reference(base).expect("parse base");
        let first_parse = start.elapsed();
        let regex_rss_mb = resident_kib().saturating_sub(rss_before) as f64 * 1024.0 / MB;
        let start = Instant::now();
        for _ in 0..100 {
            slimforge::oci::registry::parse_reference(base).expect("parse base");
        }
        let later_parse = start.elapsed() / 100;
        let url = format!("{}/v2/", reg.url());
        let ping = Samples(
            (0..20)
                .map(|_| {
                    let start = Instant::now();
                    support::http_get(&url, None).expect("GET /v2/");
                    start.elapsed()
                })
                .collect(),
        );
        // The app layer alone: our writer in process, and gzip/pigz on the file.
        let layer_path = work.join("app-layer.tar.gz");
        let app_layer = Samples(
            (0..self.runs.max(5))
                .map(|_| {
                    let start = Instant::now();
                    let mut writer = LayerWriter::create(&layer_path, LayerOptions { mtime: 0 })
                        .expect("create layer");
                    writer
                        .add(&LayerSource {
                            source: app.clone(),
                            destination: "/app".into(),
                            ..Default::default()
                        })
                        .expect("add app");
                    writer.finish().expect("finish layer");
                    start.elapsed()
                })
                .collect(),
        );
        let compress_app = |program: &str| {
            Samples(
                (0..self.runs.max(5))
                    .map(|_| {
                        let start = Instant::now();
                        support::run_ok(
                            Command::new(program)
                                .args(["-6", "-c"])
                                .arg(app)
                                .stdout(Stdio::null()),
                        );
                        start.elapsed()
                    })
                    .collect(),
            )
        };
        let (gzip_app, pigz_app) = (compress_app("gzip"), compress_app("pigz"));
        let micros = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
        writeln!(
            report.text,
            "Fixed costs behind these figures:\n\n| diagnostic | value |\n|---|---|\n\
             | HTTP requests, slimforge fresh repository (of which `GET /v2/`) | {} ({}) |\n\
             | HTTP requests, slimforge repeat push (of which `GET /v2/`) | {} ({}) |\n\
             | HTTP requests, buildah warm push to a fresh repository (of which `GET /v2/`) | {} ({}) |\n\
             | HTTP requests, skopeo copy of the umoci image to a fresh repository (of which `GET /v2/`) | {} ({}) |\n\
             | `slimforge --version` (process start and exit, median) | {} |\n\
             | first image-reference parse in a process (oci-spec compiles its reference regex) | {} (+{:.1} MB resident) |\n\
             | later image-reference parses | {} |\n\
             | one `GET /v2/` round trip to the registry (median of 20) | {} |\n\
             | `LayerWriter` on the 1.9 MB seed app alone, in process (median) | {} |\n\
             | `gzip -6 -c app` / `pigz -6 -c app` (median, process included) | {} / {} |\n",
            slim.0,
            slim.1,
            slim_repeat.0,
            slim_repeat.1,
            buildah.0,
            buildah.1,
            umoci.0,
            umoci.1,
            fmt_duration(version.median()),
            fmt_duration(first_parse),
            regex_rss_mb,
            micros(later_parse),
            micros(ping.median()),
            fmt_duration(app_layer.median()),
            fmt_duration(gzip_app.median()),
            fmt_duration(pigz_app.median()),
        )
        .unwrap();
    }

    /// b. The same onto the ~600 MB Go builder base.
    fn seed_on_golang(&self, report: &mut Report) {
        eprintln!("== golang: pushing the golang base (first build takes minutes)");
        let reg = &self.registry;
        let base = support::push_golang(reg, "golang");
        let base_layers = support::skopeo_inspect(&base)["Layers"]
            .as_array()
            .map(Vec::len)
            .unwrap_or(0);
        let work = self.work_dir("golang");
        let app = &self.app;
        slimforge(
            &seed_spec(&base, app, &reg.image("sf-go-repeat", "warmup")),
            &work,
            "info",
            false,
        );
        let runs = self.runs.max(5);
        let cold_runs = 3;
        let mut fresh = Vec::new();
        let mut repeat = Vec::new();
        let mut events = Vec::new();
        let mut cold = Vec::new();
        for round in 0..runs {
            eprintln!("== golang: round {}/{runs}", round + 1);
            let run = slimforge(
                &seed_spec(&base, app, &reg.image(&format!("sf-go-{round}"), "v1")),
                &work,
                "info",
                false,
            );
            if round == 0 {
                check_image(run.result["reference"].as_str().unwrap(), base_layers + 1);
            }
            fresh.push(run.wall);
            events.push(run.events);
            let run = slimforge(
                &seed_spec(&base, app, &reg.image("sf-go-repeat", &format!("v{round}"))),
                &work,
                "info",
                false,
            );
            repeat.push(run.wall);
            if round < cold_runs {
                self.buildah.reset();
                let (wall, pushed) = self.buildah.seed_stage(
                    &base,
                    app,
                    &format!("localhost/bench-go-cold-{round}"),
                    &reg.image(&format!("buildah-go-cold-{round}"), "v1"),
                );
                if round == 0 {
                    check_image(&pushed, base_layers + 1);
                }
                cold.push(wall);
            }
        }
        self.buildah.reset();
        let (fresh, repeat, cold) = (Samples(fresh), Samples(repeat), Samples(cold));
        let rss = slimforge(
            &seed_spec(&base, app, &reg.image("sf-go-rss", "v1")),
            &work,
            "info",
            true,
        )
        .peak_rss_kib
        .unwrap_or(0);

        report.section(
            "b. Seed final stage on the golang base (~600 MB unpacked, ~190 MB compressed)",
            &format!(
                "Same stage onto the Go builder base (OCI media types, {base_layers} layer(s)). \
                 slimforge never downloads the base: its layers are mounted into the target \
                 repository registry-side. buildah cold pulls and unpacks the base, then pushes. \
                 Peak RSS of one slimforge run: {:.1} MB.",
                rss as f64 * 1024.0 / MB
            ),
        );
        let seed = self.seed_reference.get().copied();
        report
            .text
            .push_str("| tool, scenario | runs | median | min | max | median vs busybox case |\n|---|---|---|---|---|---|\n");
        let vs = |s: &Samples| match seed {
            Some(b) => format!("{:.2}×", ratio(s.median(), b)),
            None => "–".into(),
        };
        for (name, s) in [
            ("slimforge, fresh repository", &fresh),
            ("slimforge, repeat push", &repeat),
            ("buildah cold, fresh repository", &cold),
        ] {
            let row = timing_row(name, s, &[vs(s)]);
            report.text.push_str(&row);
            report.text.push('\n');
        }
        report.text.push('\n');
        phase_table(
            report,
            "slimforge, fresh repository",
            &events,
            fresh.median(),
        );
        self.debug_timeline(
            report,
            &seed_spec(&base, app, &reg.image("sf-go-debug", "v1")),
            &work,
        );
        match seed {
            Some(b) => {
                let r = ratio(fresh.median(), b);
                report.target(format!(
                    "golang base within 1.5× of the busybox case (slimforge, fresh repository): \
                     {r:.2}× → {}",
                    met(r <= 1.5)
                ));
            }
            None => report.target(
                "golang base within 1.5× of the busybox case: not evaluated (run `seed` too)"
                    .into(),
            ),
        }
    }

    /// Runs once with SLIMFORGE_LOG=debug and adds the log as a timeline.
    fn debug_timeline(&self, report: &mut Report, spec: &Value, work: &Path) {
        let wall_start = SystemTime::now();
        let run = slimforge(spec, work, "debug,hyper=info,h2=info,rustls=info", false);
        let lines = log_lines(&run.stderr, wall_start);
        report.text.push_str(&format!(
            "<details><summary>One run with SLIMFORGE_LOG=debug ({} total)</summary>\n\n```\n",
            fmt_duration(run.wall)
        ));
        for (line, at) in lines.iter().take(60) {
            let short: String = line.chars().take(150).collect();
            writeln!(
                report.text,
                "+{:>7.1} ms  {short}",
                at.as_secs_f64() * 1000.0
            )
            .unwrap();
        }
        if lines.len() > 60 {
            writeln!(report.text, "… {} more lines", lines.len() - 60).unwrap();
        }
        writeln!(
            report.text,
            "+{:>7.1} ms  (process exited)\n```\n</details>\n",
            run.wall.as_secs_f64() * 1000.0
        )
        .unwrap();
    }

    /// c. LayerWriter throughput on a ~200 MB tree vs tar + compressors.
    fn layer_throughput(&self, report: &mut Report) {
        let tree = self.dir.join(format!("tree-{DATA_VERSION}"));
        let stats = ensure_tree(&tree, &self.dir.join(format!("tree-{DATA_VERSION}.done")));
        let out_dir = self.work_dir("layer");
        let input = stats.bytes as f64;
        eprintln!(
            "== layer: tree of {:.1} MB in {} files, {} dirs",
            input / MB,
            stats.files,
            stats.dirs
        );
        let tree_arg = tree.display().to_string();
        let shell = |pipeline: &str, out: &Path| -> Duration {
            let script = format!(
                "set -o pipefail; tar -cf - -C '{tree_arg}' . {pipeline} > '{}'",
                out.display()
            );
            let start = Instant::now();
            support::run_ok(Command::new("bash").arg("-c").arg(&script));
            start.elapsed()
        };
        // Page cache warm for everyone.
        shell("", Path::new("/dev/null"));

        let ours_path = out_dir.join("slimforge.tar.gz");
        let mut digests = Vec::new();
        let peers: [(&str, &str, &str); 4] = [
            ("tar only (no compression)", "", "plain.tar"),
            ("tar | pigz -6 (2 threads)", "| pigz -6", "pigz.tar.gz"),
            ("tar | gzip -6", "| gzip -6", "gzip.tar.gz"),
            ("tar | zstd -3 -T2", "| zstd -q -3 -T2", "zstd.tar.zst"),
        ];
        let runs = self.runs.max(5);
        let gzip_runs = 3;
        let mut ours = Vec::new();
        let mut peer_samples: Vec<Vec<Duration>> = vec![Vec::new(); peers.len()];
        for round in 0..runs {
            eprintln!("== layer: round {}/{runs}", round + 1);
            let start = Instant::now();
            let mut writer =
                LayerWriter::create(&ours_path, LayerOptions { mtime: 0 }).expect("create layer");
            writer
                .add(&LayerSource {
                    source: tree.clone(),
                    destination: "/data".into(),
                    ..Default::default()
                })
                .expect("add tree");
            let d = writer.finish().expect("finish layer");
            ours.push(start.elapsed());
            digests.push(d);
            for (i, (name, pipeline, file)) in peers.iter().enumerate() {
                if name.contains("gzip -6") && round >= gzip_runs {
                    continue;
                }
                peer_samples[i].push(shell(pipeline, &out_dir.join(file)));
            }
        }
        let identical = digests.windows(2).all(|w| w[0] == w[1]);
        let ours_size = digests[0].size;
        // The CLI on one CPU (one gzip thread) must write the same layer.
        eprintln!("== layer: slimforge assemble of the tree on one CPU");
        let spec = json!({
            "base": "scratch",
            "layers": [{"source": tree, "destination": "/data"}],
            "target": self.registry.image("tree-one-cpu", "v1"),
            "insecure": true,
        });
        let spec_path = write_spec(&out_dir, &spec);
        let result_path = out_dir.join("result.json");
        let start = Instant::now();
        support::run_ok(
            Command::new("taskset")
                .args(["-c", "0", SLIMFORGE, "assemble", "--spec"])
                .arg(&spec_path)
                .arg("--result")
                .arg(&result_path)
                .env_remove("SOURCE_DATE_EPOCH"),
        );
        let one_cpu_wall = start.elapsed();
        let one_cpu: Value =
            serde_json::from_slice(&fs::read(&result_path).expect("result")).expect("result");
        let one_cpu_digest = one_cpu["layers"][0]["digest"].as_str().unwrap_or("?");
        let same_on_one_cpu = one_cpu_digest == digests[0].digest;
        // An independent reader takes the whole layer.
        let listed = support::run_ok(Command::new("tar").arg("-tzf").arg(&ours_path)).stdout;
        let entries = listed.iter().filter(|b| **b == b'\n').count();
        let expected_entries = (stats.files + stats.dirs + stats.links) as usize;

        report.section(
            "c. Layer-writing throughput (~200 MB mixed tree)",
            &format!(
                "A deterministic tree under `target/bench-data/tree-{DATA_VERSION}` (generated once, \
                 then cached): {:.1} MB in {} regular files, {} directories and {} symlinks — \
                 {} small text files (0.2–16 KB), {} small random files, 40 × 1 MB \
                 semi-compressible binaries, and big files: 40 MB text, 40 MB random, 20 MB \
                 semi-compressible. `LayerWriter` (the library API `assemble` uses; deterministic \
                 gzip level 6 in 1 MiB chunks on all cores) writes it to a file under /data; the \
                 others are `tar -cf - -C DIR . | COMPRESSOR > file` on the same tree, page cache \
                 warm. Throughput is MB (10^6 bytes) of file content per second at the median.",
                input / MB,
                stats.files,
                stats.dirs,
                stats.links,
                stats.small_text,
                stats.small_random,
            ),
        );
        report.text.push_str(
            "| writer | runs | median | min | max | MB/s | output | ratio |\n|---|---|---|---|---|---|---|---|\n",
        );
        let ours = Samples(ours);
        let size_of = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let mut rows = vec![(
            "slimforge LayerWriter (gzip -6, 1 MiB chunks)".to_string(),
            ours,
            ours_size,
        )];
        for ((name, _, file), s) in peers.iter().zip(peer_samples) {
            let size = if file.is_empty() {
                0
            } else {
                size_of(&out_dir.join(file))
            };
            rows.push((name.to_string(), Samples(s), size));
        }
        for (name, s, size) in &rows {
            let mbps = input / MB / s.median().as_secs_f64();
            let row = timing_row(
                name,
                s,
                &[
                    format!("{mbps:.0}"),
                    format!("{:.1} MB", *size as f64 / MB),
                    format!("{:.2}", input / *size as f64),
                ],
            );
            report.text.push_str(&row);
            report.text.push('\n');
        }
        writeln!(
            report.text,
            "\nDeterminism: {} runs of the writer gave {} (`{}`, {:.1} MB). `tar -tzf` lists {} \
             entries in our layer for {} on disk.\n",
            digests.len(),
            if identical {
                "byte-identical output"
            } else {
                "DIFFERENT outputs"
            },
            digests[0].digest,
            ours_size as f64 / MB,
            entries,
            expected_entries
        )
        .unwrap();
        writeln!(
            report.text,
            "`slimforge assemble` of the same tree onto scratch under `taskset -c 0` (one CPU, so \
             one gzip thread), pushed: {} in {} — layer digest {}.\n",
            fmt_duration(one_cpu_wall),
            if same_on_one_cpu {
                "the same layer"
            } else {
                "a DIFFERENT layer"
            },
            one_cpu_digest
        )
        .unwrap();
        let pigz = rows[2].1.median();
        report.target(format!(
            "layer writer output identical across {} runs, and from the CLI on one CPU: {}",
            digests.len(),
            met(identical && same_on_one_cpu)
        ));
        report.target(format!(
            "(no set target) layer writer vs tar | pigz -6: {:.0} vs {:.0} MB/s ({:.2}× pigz's time)",
            input / MB / rows[0].1.median().as_secs_f64(),
            input / MB / pigz.as_secs_f64(),
            ratio(rows[0].1.median(), pigz)
        ));
        assert_eq!(entries, expected_entries, "tar -tzf entry count");
        let _ = fs::remove_dir_all(&out_dir);
    }

    /// d. Peak RSS adding a ~500 MB file onto scratch.
    fn memory(&self, report: &mut Report) {
        let big = self.dir.join(format!("big-500mb-{DATA_VERSION}.bin"));
        ensure_big_file(&big, 500_000_000);
        let work = self.work_dir("memory");
        let reg = &self.registry;
        let runs = 3;
        let mut walls = Vec::new();
        let mut rss = Vec::new();
        let mut events = Vec::new();
        let mut layer_size = 0;
        for round in 0..runs {
            eprintln!("== memory: round {}/{runs}", round + 1);
            let spec = json!({
                "base": "scratch",
                "layers": [{"source": big, "destination": "/data/big.bin"}],
                "target": reg.image(&format!("big-{round}"), "v1"),
                "insecure": true,
            });
            let run = slimforge(&spec, &work, "info", true);
            walls.push(run.wall);
            rss.push(run.peak_rss_kib.unwrap_or(0));
            events.push(run.events);
            layer_size = run.result["layers"][0]["size"].as_u64().unwrap_or(0);
        }
        let walls = Samples(walls);
        let max_rss = rss.iter().copied().max().unwrap_or(0) as f64 * 1024.0 / MB;
        let min_rss = rss.iter().copied().min().unwrap_or(0) as f64 * 1024.0 / MB;
        report.section(
            "d. Memory: a 500 MB layer onto scratch",
            &format!(
                "`slimforge assemble` with base `scratch` and one layer: a 500 MB file of mixed \
                 content (1 MiB blocks: text, random, semi-compressible) at /data/big.bin, pushed \
                 to a fresh repository each run, under `/usr/bin/time -f %M`. The compressed \
                 layer is {:.1} MB.",
                layer_size as f64 / MB
            ),
        );
        report.text.push_str(
            "| runs | median | min | max | MB/s (input) | peak RSS (min–max) |\n|---|---|---|---|---|---|\n",
        );
        writeln!(
            report.text,
            "| {runs} | {} | {} | {} | {:.0} | {min_rss:.1}–{max_rss:.1} MB |\n",
            fmt_duration(walls.median()),
            fmt_duration(walls.min()),
            fmt_duration(walls.max()),
            500.0 / walls.median().as_secs_f64(),
        )
        .unwrap();
        phase_table(report, "500 MB onto scratch", &events, walls.median());
        report.target(format!(
            "peak RSS under 100 MB adding a 500 MB layer: {max_rss:.1} MB (worst of {runs}) → {}",
            met(max_rss < 100.0)
        ));
        let _ = fs::remove_dir_all(&work);
    }
}

fn met(ok: bool) -> &'static str {
    if ok { "**met**" } else { "**MISSED**" }
}

/// Median time at which each info-level log message appeared.
fn phase_table(
    report: &mut Report,
    what: &str,
    runs: &[BTreeMap<String, Duration>],
    total: Duration,
) {
    let mut names: Vec<(Duration, String)> = Vec::new();
    let all: std::collections::BTreeSet<&String> = runs.iter().flat_map(|r| r.keys()).collect();
    for name in all {
        let times: Vec<Duration> = runs.iter().filter_map(|r| r.get(name).copied()).collect();
        if times.len() == runs.len() {
            names.push((Samples(times).median(), name.clone()));
        }
    }
    names.sort();
    writeln!(
        report.text,
        "Where the time goes ({what}, median over {} runs, from process start):\n\n\
         | log event | at |\n|---|---|",
        runs.len()
    )
    .unwrap();
    for (at, name) in names {
        writeln!(report.text, "| {name} | {} |", fmt_duration(at)).unwrap();
    }
    writeln!(
        report.text,
        "| process exited | {} |\n",
        fmt_duration(total)
    )
    .unwrap();
}

// ---------------------------------------------------------------------------
// Deterministic data

/// splitmix64: small, fast, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn random(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// Source-code-like text: words, identifiers, numbers, lines.
    fn text(&mut self, len: usize) -> Vec<u8> {
        const WORDS: &[&str] = &[
            "fn",
            "let",
            "mut",
            "self",
            "return",
            "match",
            "registry",
            "layer",
            "digest",
            "manifest",
            "config",
            "image",
            "push",
            "pull",
            "blob",
            "tar",
            "gzip",
            "error",
            "result",
            "value",
            "string",
            "path",
            "file",
            "directory",
            "mode",
            "owner",
            "build",
            "stage",
            "base",
            "scratch",
            "target",
            "platform",
            "linux",
            "amd64",
            "=",
            "{",
            "}",
            "(",
            ")",
            ";",
            "->",
            "::",
            "if",
            "else",
            "for",
            "in",
            "while",
            "struct",
            "impl",
            "pub",
            "use",
            "crate",
            "the",
            "a",
            "of",
            "to",
            "and",
            "is",
            "with",
            "when",
            "not",
            "every",
            "one",
            "new",
        ];
        let mut out = Vec::with_capacity(len + 64);
        let mut column = 0;
        while out.len() < len {
            let roll = self.below(16);
            if roll == 0 {
                let n = self.below(100_000);
                write!(out, "{n}").unwrap();
            } else if roll == 1 {
                let id = self.below(1 << 20);
                write!(out, "v{id:x}").unwrap();
            } else {
                out.extend_from_slice(WORDS[self.below(WORDS.len() as u64) as usize].as_bytes());
            }
            column += 1;
            if column > 6 + self.below(8) {
                out.push(b'\n');
                column = 0;
                let indent = self.below(4) as usize * 4;
                out.extend(std::iter::repeat_n(b' ', indent));
            } else {
                out.push(b' ');
            }
        }
        out.truncate(len);
        out
    }

    /// Binary-like: fixed-layout records with counters, small integers,
    /// zero padding and some noise (about 2:1 with gzip).
    fn semi(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 32);
        let mut counter: u32 = self.next() as u32;
        while out.len() < len {
            counter = counter.wrapping_add(1 + self.below(3) as u32);
            out.extend_from_slice(&counter.to_le_bytes());
            out.extend_from_slice(&(self.below(256) as u16).to_le_bytes());
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&(self.next() as u32).to_le_bytes());
            out.extend_from_slice(&[0x48, 0x89, 0xe5, 0x00]);
        }
        out.truncate(len);
        out
    }
}

#[derive(Default)]
struct TreeStats {
    bytes: u64,
    files: u64,
    dirs: u64,
    links: u64,
    small_text: u64,
    small_random: u64,
}

/// Generates the ~200 MB tree once; later runs find it by its stamp.
fn ensure_tree(tree: &Path, stamp: &Path) -> TreeStats {
    if !stamp.exists() || !tree.is_dir() {
        eprintln!("== layer: generating {}", tree.display());
        let partial = tree.with_extension("partial");
        let _ = fs::remove_dir_all(&partial);
        generate_tree(&partial);
        let _ = fs::remove_dir_all(tree);
        fs::rename(&partial, tree).expect("publish tree");
        fs::write(stamp, DATA_VERSION).expect("write stamp");
    }
    let mut stats = TreeStats::default();
    for entry in walkdir::WalkDir::new(tree).min_depth(1) {
        let entry = entry.expect("walk tree");
        let ft = entry.file_type();
        if ft.is_symlink() {
            stats.links += 1;
        } else if ft.is_dir() {
            stats.dirs += 1;
        } else {
            stats.files += 1;
            stats.bytes += entry.metadata().expect("metadata").len();
            let path = entry.path().to_string_lossy();
            if path.contains("/src/") {
                stats.small_text += 1;
            } else if path.contains("/assets/") {
                stats.small_random += 1;
            }
        }
    }
    stats
}

fn generate_tree(root: &Path) {
    let mut rng = Rng(0x5eed_f0e5_2026);
    let write = |path: PathBuf, data: &[u8]| {
        fs::create_dir_all(path.parent().unwrap()).expect("create dir");
        fs::write(&path, data).expect("write file");
    };
    // 6,000 small text files in 60 directories: ~48 MB.
    for d in 0..60 {
        for f in 0..100 {
            let len = 200 + rng.below(16_000) as usize;
            let data = rng.text(len);
            write(root.join(format!("src/mod{d:02}/file{f:03}.rs")), &data);
        }
    }
    // 1,500 small incompressible files: ~12 MB.
    for d in 0..15 {
        for f in 0..100 {
            let len = 512 + rng.below(15_000) as usize;
            let data = rng.random(len);
            write(root.join(format!("assets/set{d:02}/blob{f:03}.bin")), &data);
        }
    }
    // 40 semi-compressible 1 MB files.
    for f in 0..40 {
        let data = rng.semi(1_000_000);
        write(root.join(format!("lib/lib{f:02}.so")), &data);
    }
    write(root.join("big/app.log"), &rng.text(40_000_000));
    write(root.join("big/archive.bin"), &rng.random(40_000_000));
    write(root.join("big/table.dat"), &rng.semi(20_000_000));
    for i in 0..10 {
        std::os::unix::fs::symlink(
            format!("../lib/lib{i:02}.so"),
            root.join(format!("big/link{i}.so")),
        )
        .expect("symlink");
    }
}

/// A file of `len` bytes of mixed content in 1 MiB blocks, generated once.
fn ensure_big_file(path: &Path, len: u64) {
    if fs::metadata(path).map(|m| m.len()).ok() == Some(len) {
        return;
    }
    eprintln!("== memory: generating {}", path.display());
    let partial = path.with_extension("partial");
    let mut out = BufWriter::new(File::create(&partial).expect("create big file"));
    let mut rng = Rng(0xb16_f11e);
    let mut written = 0u64;
    while written < len {
        let n = (len - written).min(1 << 20) as usize;
        let block = match rng.below(20) {
            0..=8 => rng.text(n),
            9..=15 => rng.random(n),
            _ => rng.semi(n),
        };
        out.write_all(&block).expect("write big file");
        written += n as u64;
    }
    out.flush().expect("flush big file");
    drop(out);
    fs::rename(&partial, path).expect("publish big file");
}
