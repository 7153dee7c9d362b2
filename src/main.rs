use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use slimforge::assemble::{AssembleSpec, assemble};
use slimforge::plan::{BuildPlan, PlanRequest};
use slimforge::recipe;
use slimforge::stage;

#[derive(Parser)]
#[command(
    name = "slimforge",
    version,
    about = "Slim container images from multi-stage builds, without a Docker daemon"
)]
struct Cli {
    /// How logs (on stderr) are written: text or json; the level is in
    /// SLIMFORGE_LOG (e.g. `debug`, `slimforge=trace`; default `warn` for
    /// `build`, `info` for the rest).
    #[arg(long, global = true, env = "SLIMFORGE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, hide_possible_values = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line, for log collectors.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Assemble an image and push it: from a spec, or the build's final
    /// image from the plan and the probe's recipe in the workspace.
    Assemble {
        /// The assembly spec (YAML or JSON).
        #[arg(long, conflicts_with_all = ["plan", "workspace", "image", "tags", "insecure", "auth", "ca_bundle", "context"])]
        spec: Option<PathBuf>,
        /// The BuildPlan (JSON); default: the SLIMFORGE_PLAN environment variable.
        #[arg(long)]
        plan: Option<PathBuf>,
        /// The build's workspace: results/probe.json, exports/, tmp/.
        #[arg(long)]
        workspace: Option<PathBuf>,
        /// Where the image goes (a tag).
        #[arg(long, required_unless_present = "spec")]
        image: Option<String>,
        /// More tags for the same image, repeatable.
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// Plain HTTP or unverified TLS registries.
        #[arg(long)]
        insecure: bool,
        /// dockerconfigjson for every registry involved.
        #[arg(long)]
        auth: Option<PathBuf>,
        /// Extra trusted CA certificates (PEM).
        #[arg(long)]
        ca_bundle: Option<PathBuf>,
        /// The build context (default: WORKSPACE/context).
        #[arg(long)]
        context: Option<PathBuf>,
        /// Also write the result as JSON here (e.g. the termination-message path).
        #[arg(long)]
        result: Option<PathBuf>,
        /// A builder stage's image, repeatable: the largest one's compressed
        /// size is reported too (`builderImage`, `builderSizeBytes`).
        #[arg(long = "builder-image", value_name = "IMAGE")]
        builder_images: Vec<String>,
        /// dockerconfigjson to read the builder image with (repeatable; tried
        /// in order, then --auth).
        #[arg(long = "builder-auth", value_name = "FILE")]
        builder_auth: Vec<PathBuf>,
    },
    /// Plan a build: a Dockerfile or an ImageBuild manifest → chains, exports, final image.
    ///
    /// Nothing runs and nothing is pulled. The text lists the chains (one pod
    /// each), the waves of pods that run in parallel, and how the final image
    /// is assembled; `-o json` prints the BuildPlan the pods are handed,
    /// whose `waves` list only the chains (the probe pod and the assembly are
    /// added by the controller).
    Plan {
        /// A Dockerfile, or an ImageBuild manifest with an inline spec.dockerfile;
        /// `-` reads standard input.
        file: PathBuf,
        /// NAME=value, repeatable; wins over the manifest's spec.buildArgs.
        #[arg(long = "build-arg", value_name = "NAME=VALUE")]
        build_args: Vec<String>,
        /// Stop at this stage.
        #[arg(long)]
        target: Option<String>,
        /// os/arch[/variant] (default linux/amd64).
        #[arg(long)]
        platform: Option<String>,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = PlanOutput::Text)]
        output: PlanOutput,
    },
    /// The helper that runs inside build pods.
    #[command(subcommand)]
    Stage(StageCommand),
    /// The stage cache's entries in a registry.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Print the ImageBuild CustomResourceDefinition (YAML).
    Crd,
    /// Run the operator (in-cluster config or KUBECONFIG).
    Controller {
        /// The operator image build pods use for the helper and the assembly.
        #[arg(long, env = "SLIMFORGE_HELPER_IMAGE")]
        helper_image: String,
        /// Watch only these namespaces, comma-separated (default, or empty: all).
        #[arg(long, env = "WATCH_NAMESPACE", value_name = "NS[,NS…]")]
        namespace: Option<String>,
        /// Serve /metrics, /healthz and /readyz here.
        #[arg(long, default_value = "0.0.0.0:8080")]
        metrics_address: std::net::SocketAddr,
        /// At most this many ImageBuilds reconciled at once (per watched
        /// namespace); 0: no limit. Bounds memory and the load on the API server.
        #[arg(long, env = "SLIMFORGE_CONCURRENCY", default_value_t = 16)]
        concurrency: u16,
        /// Run only while holding the leader Lease.
        #[arg(long)]
        leader_election: bool,
        #[arg(long, default_value = "slimforge-controller")]
        lease_name: String,
        /// The Lease's namespace (default: the pod's, from POD_NAMESPACE).
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        lease_namespace: String,
        /// The shortest `spec.triggers.interval` honoured, e.g. `1m`.
        #[arg(long, env = "SLIMFORGE_TRIGGER_FLOOR", default_value = "1m",
              value_parser = parse_duration_arg)]
        trigger_floor: std::time::Duration,
        /// The size of a `RUN --mount=type=cache` volume when the
        /// ImageBuild's `spec.cacheVolumes.size` gives none.
        #[arg(long, env = "SLIMFORGE_CACHE_VOLUME_SIZE",
              default_value = slimforge::controller::pods::DEFAULT_CACHE_VOLUME_SIZE)]
        cache_volume_size: String,
        /// The StorageClass of cache volumes when the spec gives none
        /// (default: the cluster's default class).
        #[arg(long, env = "SLIMFORGE_CACHE_VOLUME_CLASS")]
        cache_volume_class: Option<String>,
    },
    /// Build an ImageBuild locally: the same pods as in a cluster, run by podman.
    ///
    /// Needs podman (`podman kube play`) and a registry to push to. Progress
    /// and the sizes go to stderr; on success the last line on stdout is
    /// the pushed image's reference (`registry/name@sha256:…`), so
    /// `ref=$(slimforge build app.yaml)` works. The exit code is non-zero on
    /// any failure, and the build's pods and volumes are removed however it
    /// ends.
    Build {
        /// The ImageBuild manifest (ConfigMaps it names may be in the same file).
        file: PathBuf,
        /// The operator image for the pods (default: publish this binary as one).
        #[arg(long)]
        helper_image: Option<String>,
        /// A static slimforge binary to publish as the helper image.
        #[arg(long, conflicts_with = "helper_image")]
        helper_binary: Option<PathBuf>,
        /// dockerconfigjson with the push credentials (default: the usual auth files).
        #[arg(long)]
        push_secret: Option<PathBuf>,
        /// A directory with `username` and `password` files: the git
        /// context's credentialsSecret, which is not read locally.
        #[arg(long)]
        git_credentials: Option<PathBuf>,
        /// A build secret for `RUN --mount=type=secret`, as buildx takes it:
        /// `id=ID,src=FILE` or `id=ID,env=VAR` (repeatable).
        #[arg(long = "secret", value_name = "id=ID,src=FILE")]
        secrets: Vec<slimforge::local::LocalSecret>,
    },
}

/// The helper inside build pods: a static binary, no shell or libc needed.
#[derive(Subcommand)]
enum StageCommand {
    /// Copy this executable to DIR/slimforge, mode 0755.
    Install { dir: PathBuf },
    /// Open the workspace DIR to the build's other users (1777) if its owner
    /// may and they cannot write there yet.
    Open { dir: PathBuf },
    /// Write this process's effective `uid:gid` to FILE.
    Whoami { file: PathBuf },
    /// In the final image's base: evaluate the final stage (destinations through
    /// the base's links, --chown names, ENV, WORKDIR) into the recipe the assemble step follows.
    Probe {
        /// The BuildPlan (JSON); default: the SLIMFORGE_PLAN environment variable.
        #[arg(long)]
        plan: Option<PathBuf>,
        /// Where the recipe (JSON) goes, e.g. /.slimforge/results/probe.json.
        #[arg(long)]
        result: PathBuf,
        /// The build's workspace: its shared directories are made (1777) first.
        #[arg(long)]
        workspace: Option<PathBuf>,
    },
    /// In a chain pod: apply the chain's stages, run its RUNs, write its exports and result.
    ///
    /// The build context comes from $SLIMFORGE_CONTEXT when set (JSON:
    /// {"inline": {PATH: TEXT}}, {"configMap": {"dir", "items": [{"key",
    /// "path", "mode"}]}} or {"dir": DIR}), else it is WORKSPACE/context.
    Run {
        /// The BuildPlan (JSON); without it, the plan's JSON in $SLIMFORGE_PLAN.
        #[arg(long)]
        plan: Option<PathBuf>,
        /// The id of the chain to run.
        #[arg(long)]
        chain: String,
        /// The workspace: exports/, results/, tmp/ (and context/ when
        /// $SLIMFORGE_CONTEXT is unset).
        #[arg(long, default_value = slimforge::contract::WORKSPACE_MOUNT)]
        workspace: PathBuf,
        /// The image user's `uid:gid`, as `stage whoami` wrote it [default: WORKSPACE/whoami].
        #[arg(long)]
        whoami: Option<PathBuf>,
        /// A runtime chain: write what it changed in the filesystem as one layer here.
        #[arg(long)]
        snapshot: Option<PathBuf>,
    },
    /// In the context pod of a git build: clone URL into DEST, check out
    /// REV, and write {"commit", "dockerfile"} (or {"error"}) to RESULT.
    Clone {
        /// https://, http:// or git:// URL of the repository.
        #[arg(long)]
        url: String,
        /// Branch, tag, full ref name or full commit SHA (default: the remote's HEAD).
        #[arg(long)]
        revision: Option<String>,
        /// Where the checkout goes (without its .git).
        #[arg(long)]
        dest: PathBuf,
        /// The context's directory inside the checkout.
        #[arg(long)]
        sub_path: Option<String>,
        /// A directory with `username` and `password` files (HTTPS basic auth).
        #[arg(long)]
        credentials: Option<PathBuf>,
        /// Return this Dockerfile (relative to the sub path), gzip-compressed, in the result.
        #[arg(long)]
        dockerfile: Option<String>,
        /// Where the result (JSON, at most 3 KiB) goes; also the termination message.
        #[arg(long)]
        result: PathBuf,
        /// The build's workspace: its shared directories are made (1777) first.
        #[arg(long)]
        workspace: Option<PathBuf>,
    },
    /// Record the filesystem, then write what changed since as one layer.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Download cache hits' exports (verified) into a directory, the
    /// workspace's exports/, one line per export on stdout.
    ///
    /// The spec (JSON): {"repository", "insecure", "auth", "caBundle",
    /// "entries": [chain entries as looked up], "into"}.
    Restore {
        /// The restore spec; default: the SLIMFORGE_RESTORE environment variable.
        #[arg(long)]
        spec: Option<PathBuf>,
    },
    /// List the local `RUN --mount=type=cache` volumes: id, size, volume.
    /// (In a cluster: `kubectl get pvc -l slimforge.dev/cache`.)
    List,
    /// Remove local cache volumes by id (or all); one a build is using is
    /// refused. (In a cluster: `kubectl delete pvc -l slimforge.dev/cache`.)
    Drop {
        /// Cache ids, as `slimforge cache list` shows them.
        #[arg(required_unless_present = "all")]
        ids: Vec<String>,
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Record the metadata of every path (mount points skipped) in STATE.
    Record { state: PathBuf },
    /// Write the changes since STATE as one gzip-compressed layer tar.
    Diff {
        state: PathBuf,
        /// The layer (gzip-compressed whatever the name), for `layers: [{tar: …}]`.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PlanOutput {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `build` talks to a person through its progress lines, so its logs stay
    // quiet by default; the rest run in pods whose logs operators read.
    let default_level = match cli.command {
        Command::Build { .. } => "warn",
        _ => "info",
    };
    let filter =
        EnvFilter::try_from_env("SLIMFORGE_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    match cli.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_env_filter(filter)
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .init(),
    }
    // One TLS crypto provider for every client in the process: ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<slimforge::local::LocalError>() {
                // A failed build: its reason on the error line, then the
                // log tail it carries, line by line.
                Some(slimforge::local::LocalError::Failed { reason, message }) => {
                    let mut lines = message.lines();
                    let first = lines.next().unwrap_or_default();
                    eprintln!("error: build failed ({reason}): {first}");
                    for line in lines {
                        eprintln!("  | {line}");
                    }
                }
                _ => {
                    // One line, whatever the causes carry (registry bodies
                    // can hold newlines).
                    let message = format!("{e:#}")
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ");
                    eprintln!("error: {message}");
                }
            }
            // Killed by a signal, as a shell reports it (128 + the signal).
            match e.downcast_ref::<slimforge::local::LocalError>() {
                Some(slimforge::local::LocalError::Interrupted { signal }) => {
                    ExitCode::from(128 + *signal as u8)
                }
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// `slimforge assemble` with [`slimforge::contract::REBASE_ENV`]: the
/// cached layers on the plan's final base, or why not, as the result.
async fn rebase(
    plan: Option<PathBuf>,
    output: recipe::AssembleOutput,
    request: &str,
    result: Option<PathBuf>,
) -> anyhow::Result<()> {
    use slimforge::contract::{
        CACHE_STORE_ENV, CacheStore, REBASE_ENV, RebaseOutcome, RebaseRequest,
    };
    let request: RebaseRequest =
        serde_json::from_str(request).map_err(|e| anyhow::anyhow!("${REBASE_ENV}: {e}"))?;
    let plan = BuildPlan::load(plan.as_deref())?;
    let (base, platform) = recipe::final_base(&plan)?;
    let store: Option<CacheStore> = match std::env::var(CACHE_STORE_ENV) {
        Ok(json) => Some(
            serde_json::from_str(&json).map_err(|e| anyhow::anyhow!("${CACHE_STORE_ENV}: {e}"))?,
        ),
        Err(_) => None,
    };
    let spec = AssembleSpec {
        base,
        platform: Some(platform),
        layers: Vec::new(),
        config: Default::default(),
        target: output.image,
        additional_tags: output.additional_tags,
        insecure: output.insecure,
        auth: output.auth,
        ca_bundle: output.ca_bundle,
        base_directories: Default::default(),
        work_dir: None,
        cache: store.map(|store| slimforge::assemble::CacheStoreSpec {
            repository: store.repository,
            chains: Vec::new(),
            image: store
                .image
                .map(|key| slimforge::assemble::CacheImageSpec { key }),
            layers: None,
            recipe: None,
            restore: Vec::new(),
        }),
    };
    let outcome =
        slimforge::assemble::rebase(&spec, &plan, &request.entry, &request.repository).await?;
    let json = serde_json::to_vec(&outcome)?;
    if let Some(path) = result {
        slimforge::contract::write_termination_message(&json);
        // The rebase pod is often the first on its workspace: it makes the
        // shared directories as every pod does (1777, for the pods of a
        // build that falls back), if it can; else the termination message
        // is enough.
        if let Some(workspace) = path.parent().and_then(std::path::Path::parent)
            && let Err(e) = stage::run::prepare_workspace(workspace)
        {
            tracing::debug!(error = %e, "the workspace is not prepared");
        }
        if path.parent().is_some_and(std::path::Path::is_dir) {
            std::fs::write(&path, &json)
                .map_err(|e| anyhow::anyhow!("writing result {}: {e}", path.display()))?;
        }
    }
    match outcome {
        RebaseOutcome::Rebased(image) => out(&format!("{}\n", image.reference)),
        RebaseOutcome::Refused(why) => out(&format!("no rebase: {why}\n")),
    }
}

/// Writes to standard output; a reader that went away (`slimforge plan |
/// head`) ends the output quietly, as it does for other Unix tools.
fn out(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::anyhow!("writing to standard output: {e}"))
        }
        _ => Ok(()),
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Assemble {
            spec,
            plan,
            workspace,
            image,
            tags,
            insecure,
            auth,
            ca_bundle,
            context,
            result,
            builder_images,
            builder_auth,
        } => {
            if let (None, Some(image), Ok(request)) = (
                &spec,
                &image,
                std::env::var(slimforge::contract::REBASE_ENV),
            ) {
                let output = recipe::AssembleOutput {
                    image: image.clone(),
                    additional_tags: tags,
                    insecure,
                    auth,
                    ca_bundle,
                };
                return rebase(plan, output, &request, result).await;
            }
            // A context materialised here lives until the assembly is done.
            let context_guard: Option<stage::context::Materialised>;
            let spec = match (spec, image) {
                (Some(spec), _) => AssembleSpec::load(&spec)?,
                (None, Some(image)) => {
                    let plan = BuildPlan::load(plan.as_deref())?;
                    let workspace = workspace
                        .unwrap_or_else(|| PathBuf::from(slimforge::contract::WORKSPACE_MOUNT));
                    // It may be the build's first pod (everything else
                    // cached): the shared directories, as every pod makes them.
                    if let Err(e) = stage::run::prepare_workspace(&workspace) {
                        tracing::debug!(error = %e, "the workspace is not prepared");
                    }
                    let recipe = recipe::load_recipe(&plan, &workspace)?;
                    // The assemble pod gets the build context as chain pods do.
                    context_guard =
                        match (&context, std::env::var(slimforge::contract::CONTEXT_ENV)) {
                            (None, Ok(json)) if !json.trim().is_empty() => Some(
                                stage::context::BuildContext::parse(&json)?
                                    .materialise(&workspace.join("tmp"), "assemble")?,
                            ),
                            _ => None,
                        };
                    let context =
                        context.or_else(|| context_guard.as_ref().map(|m| m.path().to_path_buf()));
                    let output = recipe::AssembleOutput {
                        image,
                        additional_tags: tags,
                        insecure,
                        auth,
                        ca_bundle,
                    };
                    // What the controller asks to be stored in the cache.
                    let store_env = slimforge::contract::CACHE_STORE_ENV;
                    match std::env::var(store_env) {
                        Ok(json) => {
                            let store: slimforge::contract::CacheStore =
                                serde_json::from_str(&json)
                                    .map_err(|e| anyhow::anyhow!("${store_env}: {e}"))?;
                            recipe::assemble_spec_cached(
                                &plan,
                                &recipe,
                                &workspace,
                                context.as_deref(),
                                &output,
                                &store,
                            )?
                        }
                        Err(_) => recipe::assemble_spec(
                            &plan,
                            &recipe,
                            &workspace,
                            context.as_deref(),
                            &output,
                        )?,
                    }
                }
                (None, None) => {
                    anyhow::bail!("give --spec FILE, or --image REF to assemble the plan")
                }
            };
            let mut outcome = assemble(&spec).await?;
            let platform = spec
                .platform
                .clone()
                .unwrap_or_else(|| "linux/amd64".into());
            for builder in builder_images {
                let auths = builder_auth
                    .iter()
                    .cloned()
                    .map(Some)
                    .chain([spec.auth.clone()]);
                for auth_file in auths {
                    let options = slimforge::oci::registry::RegistryOptions {
                        insecure: spec.insecure,
                        ca_bundle: spec.ca_bundle.clone(),
                        auth_file,
                        auth_json: None,
                    };
                    match slimforge::assemble::compressed_size(&builder, &platform, &options).await
                    {
                        Ok(size) => {
                            if outcome
                                .builder_size_bytes
                                .is_none_or(|largest| size > largest)
                            {
                                outcome.builder_size_bytes = Some(size);
                                outcome.builder_image = Some(builder.clone());
                            }
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(image = %builder, error = %e, "builder image size unknown");
                        }
                    }
                }
            }
            if let Some(path) = result {
                let json = serde_json::to_vec(&outcome)?;
                slimforge::contract::write_termination_message(&json);
                std::fs::write(&path, json)
                    .map_err(|e| anyhow::anyhow!("writing result {}: {e}", path.display()))?;
            }
            out(&format!("{}\n", outcome.reference))
        }
        Command::Plan {
            file,
            build_args,
            target,
            platform,
            output,
        } => {
            let bytes = if file.as_os_str() == "-" {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
                    .map_err(|e| anyhow::anyhow!("reading standard input: {e}"))?;
                bytes
            } else {
                std::fs::read(&file)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?
            };
            let Ok(text) = std::str::from_utf8(&bytes) else {
                // Not text: the Dockerfile parser names the line.
                slimforge::dockerfile::parse_bytes(&bytes)?;
                anyhow::bail!("{}: not UTF-8 text", file.display());
            };
            let mut request = PlanRequest::from_text(text)?;
            request.add_build_args(build_args.iter().map(String::as_str))?;
            if target.is_some() {
                request.target = target;
            }
            if platform.is_some() {
                request.platform = platform;
            }
            let plan = request.plan()?;
            match output {
                PlanOutput::Text => out(&plan.to_text()),
                PlanOutput::Json => out(&format!("{}\n", serde_json::to_string_pretty(&plan)?)),
            }
        }
        Command::Stage(command) => run_stage(command),
        Command::Cache(CacheCommand::List) => {
            for cache in slimforge::local::list_caches().await? {
                out(&format!(
                    "{}\t{}\t{}\n",
                    cache.id,
                    slimforge::api::human_size(cache.bytes),
                    cache.volume
                ))?;
            }
            Ok(())
        }
        Command::Cache(CacheCommand::Drop { ids, all }) => {
            for volume in slimforge::local::drop_caches(&ids, all).await? {
                out(&format!("{volume}\n"))?;
            }
            Ok(())
        }
        Command::Cache(CacheCommand::Restore { spec }) => {
            let spec = slimforge::cache::entry::RestoreSpec::load(spec.as_deref())?;
            // Into a workspace's exports/: its shared directories made as
            // the stage pods make them, for the users those run as.
            if spec.into.ends_with(slimforge::contract::EXPORTS_DIR)
                && let Some(workspace) = spec.into.parent()
            {
                slimforge::stage::run::prepare_workspace(workspace)?;
            }
            for line in slimforge::cache::entry::restore(&spec).await? {
                out(&format!("{line}\n"))?;
            }
            Ok(())
        }
        Command::Build {
            file,
            helper_image,
            helper_binary,
            push_secret,
            git_credentials,
            secrets,
        } => {
            let options = slimforge::local::BuildOptions {
                manifest: file,
                helper_image,
                helper_binary,
                push_secret,
                git_credentials,
                secrets,
            };
            let report = slimforge::local::build(&options).await?;
            if let Some(summary) = slimforge::local::size_summary(&report.status) {
                eprintln!("{summary}");
            }
            let image = report
                .status
                .image
                .ok_or_else(|| anyhow::anyhow!("the build succeeded without an image"))?;
            out(&format!("{}\n", image.reference))
        }
        Command::Controller {
            helper_image,
            namespace,
            metrics_address,
            leader_election,
            lease_name,
            lease_namespace,
            concurrency,
            trigger_floor,
            cache_volume_size,
            cache_volume_class,
        } => {
            if slimforge::api::quantity_bytes(&cache_volume_size).is_none_or(|b| b == 0) {
                anyhow::bail!(
                    "--cache-volume-size `{cache_volume_size}`: expected a quantity such as 5Gi"
                );
            }
            let options = slimforge::controller::run::ControllerOptions {
                settings: slimforge::controller::Settings {
                    helper_image,
                    cache_volume_size,
                    cache_volume_class: cache_volume_class.filter(|c| !c.is_empty()),
                    ..Default::default()
                },
                namespaces: slimforge::controller::run::parse_namespaces(
                    namespace.as_deref().unwrap_or_default(),
                ),
                metrics_address,
                leader_election: leader_election.then_some((lease_name, lease_namespace)),
                concurrency,
                trigger_floor,
            };
            slimforge::controller::run::run(options).await
        }
        Command::Crd => out(&slimforge::api::crd_yaml()),
    }
}

/// `30s`, `1m`, `1h30m`, as `spec.timeout` reads them.
fn parse_duration_arg(text: &str) -> Result<std::time::Duration, String> {
    slimforge::controller::reconcile::parse_duration(text)
}

fn run_stage(command: StageCommand) -> anyhow::Result<()> {
    match command {
        StageCommand::Install { dir } => {
            let installed = stage::install::install(&dir)?;
            tracing::info!(path = %installed.display(), "helper installed");
        }
        StageCommand::Open { dir } => stage::run::open_workspace(&dir)?,
        StageCommand::Whoami { file } => {
            let (uid, gid) = stage::whoami::whoami(&file)?;
            tracing::info!(uid, gid, "user recorded");
        }
        StageCommand::Probe {
            plan,
            result,
            workspace,
        } => {
            if let Some(workspace) = &workspace {
                stage::run::prepare_workspace(workspace)?;
            }
            let recipe = stage::probe::probe_plan(plan.as_deref(), &result)?;
            tracing::info!(layers = recipe.layers.len(), result = %result.display(), "recipe written");
        }
        StageCommand::Run {
            plan,
            chain,
            workspace,
            whoami,
            snapshot,
        } => {
            // Unset and empty alike mean "no context given".
            let context = std::env::var_os(slimforge::contract::CONTEXT_ENV)
                .map(|json| json.to_string_lossy().into_owned())
                .filter(|json| !json.is_empty());
            let options = stage::run::RunOptions {
                plan,
                chain,
                workspace,
                whoami,
                context,
                snapshot,
            };
            match stage::run::run(&options)? {
                slimforge::contract::ChainResult::Succeeded { exports } => {
                    tracing::info!(chain = %options.chain, ?exports, "chain done");
                }
                slimforge::contract::ChainResult::Failed(failure) => anyhow::bail!("{failure}"),
            }
        }
        StageCommand::Clone {
            url,
            revision,
            dest,
            sub_path,
            credentials,
            dockerfile,
            result,
            workspace,
        } => {
            if let Some(workspace) = &workspace {
                stage::run::prepare_workspace(workspace)?;
            }
            let options = stage::clone::CloneOptions {
                url,
                revision,
                dest,
                sub_path,
                credentials,
                dockerfile,
                plan_request: match std::env::var(slimforge::contract::PLAN_REQUEST_ENV) {
                    Ok(json) if !json.trim().is_empty() => Some(serde_json::from_str(&json)?),
                    _ => None,
                },
            };
            let commit = stage::clone::clone_with_result(&options, &result)?;
            tracing::info!(%commit, dest = %options.dest.display(), "context cloned");
        }
        StageCommand::Snapshot(SnapshotCommand::Record { state }) => {
            let paths = slimforge::rootfs::snapshot::record(&state)?;
            tracing::info!(paths, "filesystem recorded");
        }
        StageCommand::Snapshot(SnapshotCommand::Diff { state, out }) => {
            let layer = slimforge::rootfs::snapshot::diff(&state, &out)?;
            tracing::info!(digest = %layer.digest, size = layer.size, "snapshot layer written");
        }
    }
    Ok(())
}
