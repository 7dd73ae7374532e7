//! A fast-path member in a process of its own, for tests that kill one: connects through
//! busd-shim with `fastpath=1`, subscribes to `member='Tick'` signals, prints its unique name
//! once subscribed, then counts what arrives until it is killed.
//!
//!   busd-shim-member ADDRESS

use anyhow::{Context, Result};
use futures_util::StreamExt;
use zbus::{MatchRule, MessageStream};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let address = std::env::args()
        .nth(1)
        .context("usage: busd-shim-member ADDRESS")?;
    let conn = busd_shim::builder(&format!("{address},fastpath=1"))
        .await?
        .build()
        .await?;
    let rule = MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .member("Tick")?
        .build();
    let mut ticks = MessageStream::for_match_rule(rule, &conn, None).await?;
    println!("{}", conn.unique_name().context("no unique name")?);
    let mut n = 0u64;
    while let Some(Ok(_)) = ticks.next().await {
        n += 1;
    }
    eprintln!("{n} ticks");
    Ok(())
}
