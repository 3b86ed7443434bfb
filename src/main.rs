//! The `metricast` command: the server, or `metricast replay`.

use std::os::unix::net::UnixStream;
use std::process::ExitCode;

use metricast::config::{self, Command, Config};
use metricast::reactor::Reactor;
use metricast::replay;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("replay") {
        return replay::main(&args[1..]);
    }
    match config::parse(&args, |name| std::env::var(name).ok()) {
        Ok(Command::Help) => {
            print!("{}", config::help());
            ExitCode::SUCCESS
        }
        Ok(Command::Version) => {
            println!("metricast {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Ok(Command::Serve(config)) => serve(*config),
        Err(e) => {
            eprintln!("metricast: {e}");
            ExitCode::from(2)
        }
    }
}

fn serve(config: Config) -> ExitCode {
    let secrets: Vec<String> =
        config.record_token.iter().chain(&config.read_token).cloned().collect();
    metricast::logging::init(config.log_level, secrets);
    match run(config) {
        Ok(()) => {
            log::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let (reader, writer) = UnixStream::pair()?;
    reader.set_nonblocking(true)?;
    writer.set_nonblocking(true)?;
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::low_level::pipe::register(signal, writer.try_clone()?)?;
    }
    let listen = config.listen;
    let mut reactor =
        Reactor::bind(config, mio::net::UnixStream::from_std(reader))
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    log::info!(
        "metricast {} listening on {}",
        env!("CARGO_PKG_VERSION"),
        reactor.local_addr()?
    );
    reactor.run()?;
    Ok(())
}
