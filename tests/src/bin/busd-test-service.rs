//! An activatable service for the end-to-end tests, started by the bus under test.
//!
//! `busd-test-service NAME [MODE]` connects to `$DBUS_STARTER_ADDRESS`, takes NAME and
//! answers `org.example.TestService.Env(s) -> s` (a variable of its environment) at `/`.
//! MODE makes it fail instead: `exit:N` exits with status N, `signal:N` kills itself with
//! signal N, `hang` never takes its name.

use futures_util::StreamExt;
use zbus::{connection, interface};

struct Service;

#[interface(name = "org.example.TestService")]
impl Service {
    fn env(&self, name: String) -> String {
        std::env::var(&name).unwrap_or_else(|_| "(unset)".into())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let name = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: busd-test-service NAME [MODE]"))?;
    match args.next().as_deref() {
        None => {}
        Some("hang") => loop {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        },
        Some(mode) => {
            if let Some(code) = mode.strip_prefix("exit:") {
                std::process::exit(code.parse()?);
            }
            if let Some(sig) = mode.strip_prefix("signal:") {
                let sig = nix::sys::signal::Signal::try_from(sig.parse::<i32>()?)?;
                nix::sys::signal::raise(sig)?;
            }
            anyhow::bail!("unknown mode {mode}");
        }
    }
    let address = std::env::var("DBUS_STARTER_ADDRESS")?;
    let conn = connection::Builder::address(address.as_str())?
        .name(name)?
        .serve_at("/", Service)?
        .build()
        .await?;
    // Serve until the bus goes away (the stream ends with the connection).
    let mut incoming = zbus::MessageStream::from(&conn);
    while let Some(Ok(_)) = incoming.next().await {}
    Ok(())
}
