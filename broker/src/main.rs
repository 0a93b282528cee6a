//! The `cellblock` command line: `serve`, `image build`, `image path`.

use anyhow::Context;
use cellblock::config::Config;
use cellblock::image;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "cellblock",
    version,
    about = "A self-hosted code interpreter for AI agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API (builds the kernel image first if it is missing).
    Serve(ServeArgs),
    /// Manage kernel images.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Replay a notebook in a fresh sandbox on a running server; prints one
    /// line per cell and exits 1 if a cell errors or its outputs changed.
    Replay {
        /// The .ipynb file.
        notebook: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
        /// Seconds each cell may run.
        #[arg(long)]
        timeout_s: Option<f64>,
        /// Stop at the first cell that raises.
        #[arg(long)]
        stop_on_error: bool,
        /// Keep the replay sandbox.
        #[arg(long)]
        keep: bool,
    },
    /// Print a sandbox's session (live or deleted) as a notebook.
    Export {
        /// The sandbox id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Internal: the single-threaded helper that builds a sandbox and execs
    /// its kernel. Started by `serve`; not for direct use.
    #[command(name = "__jail", hide = true)]
    Jail { spec: PathBuf },
    /// Internal: the single-threaded helper that runs a command inside a
    /// live sandbox. Started by `serve`; not for direct use.
    #[command(name = "__enter", hide = true)]
    Enter { spec: PathBuf },
    /// Internal: copies an upload into a sandbox from inside its cgroup.
    #[command(name = "__write", hide = true)]
    Write { cgroup_procs: Vec<PathBuf> },
    /// Internal: execs the zygote (PROGRAM ARGS…) in a network namespace of
    /// its own. Started by `serve`; not for direct use.
    #[command(name = "__zygote", hide = true)]
    Zygote {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        argv: Vec<String>,
    },
}

#[derive(Args, Clone)]
struct ClientArgs {
    /// The server's URL.
    #[arg(
        long,
        env = "CELLBLOCK_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    /// API key, if the server has one.
    #[arg(long, env = "CELLBLOCK_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

#[derive(Args, Clone)]
struct ImageArgs {
    /// State directory.
    #[arg(long, env = "CELLBLOCK_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Where images are built [default: <data-dir>/images].
    #[arg(long, env = "CELLBLOCK_IMAGES_DIR")]
    images_dir: Option<PathBuf>,
    /// The interpreter images are built with.
    #[arg(long, env = "CELLBLOCK_PYTHON", default_value = "python3")]
    python: String,
}

impl ImageArgs {
    fn images_dir(&self) -> PathBuf {
        self.images_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("images"))
    }
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Build an image now (a no-op if it is built).
    Build {
        #[arg(default_value = "python")]
        name: String,
        #[command(flatten)]
        args: ImageArgs,
    },
    /// Print the directory of a built image (building it if missing).
    Path {
        #[arg(default_value = "python")]
        name: String,
        #[command(flatten)]
        args: ImageArgs,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on. Without an API key only loopback is allowed.
    #[arg(long, env = "CELLBLOCK_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    image: ImageArgs,
    /// API key, checked as 'Authorization: Bearer KEY'.
    #[arg(long, env = "CELLBLOCK_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Most live sandboxes; more gives 429.
    #[arg(long, default_value_t = 64)]
    max_sandboxes: usize,
    /// Sandboxes kept created and ready for the next creates (0: none).
    #[arg(long, default_value_t = 2)]
    pool_size: usize,
    /// Modules every kernel imports before it starts, comma-separated (e.g.
    /// numpy,pandas,matplotlib.pyplot): the first cell's imports are then
    /// instant, at the cost of a slower cold start and more memory per
    /// sandbox; with the warm pool the start is hidden.
    #[arg(long, default_value = "", value_parser = parse_preload)]
    preload: Preload,
    /// Spawn every kernel instead of forking it from the zygote, a process
    /// that imported numpy, pandas, matplotlib and ipykernel once.
    #[arg(long)]
    no_zygote: bool,
    /// Default execution timeout, seconds.
    #[arg(long, default_value_t = 30)]
    default_timeout_s: u64,
    /// Largest execution timeout a client may ask for, seconds.
    #[arg(long, default_value_t = 3600)]
    max_timeout_s: u64,
    /// Default idle timeout of a sandbox, seconds.
    #[arg(long, default_value_t = 900)]
    default_idle_timeout_s: u64,
    /// Largest request body, MiB.
    #[arg(long, default_value_t = 16)]
    max_body_mb: usize,
    /// Most stdout kept per execution, KiB (head and tail; the middle is dropped).
    #[arg(long, default_value_t = 8192)]
    max_stdout_kb: usize,
    /// Most stderr kept per execution, KiB.
    #[arg(long, default_value_t = 8192)]
    max_stderr_kb: usize,
    /// Most rich outputs (displays, results) kept per execution.
    #[arg(long, default_value_t = 1000)]
    max_outputs: usize,
    /// Most bytes of rich outputs kept per execution, MiB.
    #[arg(long, default_value_t = 64)]
    max_rich_mb: usize,
    /// Executions that may wait behind the running one in a sandbox; more gives 429.
    #[arg(long, default_value_t = 16)]
    max_queue: usize,
    /// Default time input() waits for an answer, seconds.
    #[arg(long, default_value_t = 60)]
    input_timeout_s: u64,
    /// How long traces are kept after their sandbox is deleted (e.g. 7d, 12h).
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    trace_retention: Duration,
    /// The cgroup filesystem root (for tests of the host check).
    #[arg(long, default_value = "/sys/fs/cgroup", hide = true)]
    cgroup_root: PathBuf,
}

/// `--preload`: module names, checked so they can only name modules.
#[derive(Clone, Debug, Default)]
struct Preload(Vec<String>);

fn parse_preload(raw: &str) -> Result<Preload, String> {
    let names: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    for n in &names {
        let ok = n.split('.').all(|part| {
            part.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
        if !ok {
            return Err(format!("{n:?} is not a module name"));
        }
    }
    Ok(Preload(names))
}

fn ensure_image(args: &ImageArgs, name: &str) -> anyhow::Result<image::Image> {
    let spec = image::spec(name)?;
    let dir = args.images_dir();
    let dir = std::path::absolute(&dir).with_context(|| format!("images dir {}", dir.display()))?;
    image::ensure(&dir, &spec, &args.python).with_context(|| format!("building image {name}"))
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let image = ensure_image(&args.image, "python")?;
    let data_dir = std::path::absolute(&args.image.data_dir)?;
    let mut cfg = Config::new(args.listen, data_dir, image.dir.clone());
    cfg.api_key = args.api_key.filter(|k| !k.is_empty());
    cfg.max_sandboxes = args.max_sandboxes;
    cfg.pool_size = args.pool_size;
    cfg.preload = args.preload.0;
    cfg.zygote_library = if args.no_zygote {
        None
    } else {
        match cellblock::sandbox::zygote::Zygote::default_library() {
            Some(lib) if lib.is_file() => Some(lib),
            other => {
                eprintln!(
                    "cellblock: the zygote is off: {} is missing (it is built next to the \
                     binary by cargo build); every kernel is spawned",
                    other.map_or_else(|| "the library".into(), |p| p.display().to_string())
                );
                None
            }
        }
    };
    cfg.default_timeout = Duration::from_secs(args.default_timeout_s);
    cfg.max_timeout = Duration::from_secs(args.max_timeout_s.max(args.default_timeout_s));
    cfg.default_idle_timeout = Duration::from_secs(args.default_idle_timeout_s.max(1));
    cfg.max_body_bytes = args.max_body_mb.max(1) * 1024 * 1024;
    cfg.output_limits = cellblock_protocol::outputs::OutputLimits {
        stdout_bytes: args.max_stdout_kb.max(1) * 1024,
        stderr_bytes: args.max_stderr_kb.max(1) * 1024,
        outputs: args.max_outputs.max(1),
        rich_bytes: args.max_rich_mb.max(1) * 1024 * 1024,
    };
    cfg.max_queued_executions = args.max_queue;
    cfg.default_input_timeout = Duration::from_secs(args.input_timeout_s.max(1));
    cfg.trace_retention = args.trace_retention;
    cfg.cgroup_root = args.cgroup_root;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(cellblock::server::run(cfg, image))?;
    Ok(())
}

/// Reads a helper's JSON spec. The helpers must stay single-threaded: no
/// runtime and no logger are started before they run.
fn read_spec<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> anyhow::Result<T> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Reports a client command's failure on stderr; its exit code.
fn client_failed(e: anyhow::Error) -> i32 {
    eprintln!("cellblock: {e:#}");
    2
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Command::Jail { spec } => cellblock::isolation::jail::run(&read_spec(spec)?),
        Command::Enter { spec } => cellblock::isolation::enter::run(&read_spec(spec)?),
        Command::Write { cgroup_procs } => cellblock::isolation::writer::run(cgroup_procs),
        Command::Zygote { argv } => cellblock::isolation::zygote::exec_without_network(argv),
        _ => {}
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CELLBLOCK_LOG")
                .unwrap_or_else(|_| "info,tower_http=warn,zeromq=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Jail { .. }
        | Command::Enter { .. }
        | Command::Write { .. }
        | Command::Zygote { .. } => Ok(()),
        Command::Replay {
            notebook,
            client,
            timeout_s,
            stop_on_error,
            keep,
        } => {
            let run = || -> anyhow::Result<bool> {
                let nb = std::fs::read(&notebook)
                    .with_context(|| format!("reading {}", notebook.display()))?;
                cellblock::cli::replay(&cellblock::cli::Replay {
                    server: &client.server,
                    key: client.api_key.as_deref(),
                    notebook: &nb,
                    timeout_s,
                    stop_on_error,
                    keep,
                })
            };
            std::process::exit(match run() {
                Ok(true) => 0,
                Ok(false) => 1,
                Err(e) => client_failed(e),
            });
        }
        Command::Export { id, client } => {
            use std::io::Write;
            match cellblock::cli::export(&client.server, client.api_key.as_deref(), &id) {
                Ok(nb) => Ok(std::io::stdout().write_all(&nb)?),
                Err(e) => std::process::exit(client_failed(e)),
            }
        }
        Command::Image { command } => match command {
            ImageCommand::Build { name, args } => {
                let img = ensure_image(&args, &name)?;
                println!("{}@{} {}", img.name, img.version, img.dir.display());
                Ok(())
            }
            ImageCommand::Path { name, args } => {
                println!("{}", ensure_image(&args, &name)?.dir.display());
                Ok(())
            }
        },
    }
}
