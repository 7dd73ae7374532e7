//! zbus clients against a busd process: calls and replies, names, signals, fd passing.

use std::time::Duration;

use busd_tests::{zbus_connect, Busd, Echo};
use futures_util::StreamExt;
use zbus::{connection, fdo, Connection, MatchRule, MessageStream};

/// A connection that owns `name` and serves [`Echo`] at `/echo`.
async fn serve_echo(bus: &Busd, name: &str) -> Connection {
    connection::Builder::address(bus.address.as_str())
        .unwrap()
        .name(name)
        .unwrap()
        .serve_at("/echo", Echo)
        .unwrap()
        .build()
        .await
        .unwrap()
}

/// Calls Echo on org.example.Service.
async fn echo(client: &Connection, text: &str) -> zbus::Message {
    client
        .call_method(
            Some("org.example.Service"),
            "/echo",
            Some("org.example.Echo"),
            "Echo",
            &(text,),
        )
        .await
        .unwrap()
}

fn timeout<F: std::future::Future>(f: F) -> tokio::time::Timeout<F> {
    tokio::time::timeout(Duration::from_secs(20), f)
}

#[tokio::test]
async fn method_call_reply_and_error_through_a_well_known_name() {
    let bus = Busd::start();
    timeout(async {
        let service = serve_echo(&bus, "org.example.Service").await;
        let client = zbus_connect(&bus).await;
        let reply = echo(&client, "hi").await;
        assert_eq!(reply.body().deserialize::<String>().unwrap(), "echo: hi");
        assert_eq!(
            reply.header().sender().unwrap().as_str(),
            service.unique_name().unwrap().as_str()
        );
        let err = client
            .call_method(
                Some("org.example.Service"),
                "/echo",
                Some("org.example.Echo"),
                "Fail",
                &(),
            )
            .await
            .unwrap_err();
        match err {
            zbus::Error::MethodError(name, Some(text), _) => {
                assert_eq!(name.as_str(), "org.freedesktop.DBus.Error.Failed");
                assert_eq!(text, "it failed");
            }
            other => panic!("unexpected {other:?}"),
        }
        let dbus = fdo::DBusProxy::new(&client).await.unwrap();
        let owner = dbus
            .get_name_owner("org.example.Service".try_into().unwrap())
            .await
            .unwrap();
        assert_eq!(owner.as_str(), service.unique_name().unwrap().as_str());
        let missing = dbus
            .get_name_owner("org.example.Missing".try_into().unwrap())
            .await
            .unwrap_err();
        assert!(
            matches!(missing, fdo::Error::NameHasNoOwner(_)),
            "{missing:?}"
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn name_ownership_moves_and_is_announced() {
    let bus = Busd::start();
    timeout(async {
        let watcher = zbus_connect(&bus).await;
        let dbus = fdo::DBusProxy::new(&watcher).await.unwrap();
        let mut changes = dbus.receive_name_owner_changed().await.unwrap();
        let a = zbus_connect(&bus).await;
        let b = zbus_connect(&bus).await;
        let name = "org.example.Moving";
        let da = fdo::DBusProxy::new(&a).await.unwrap();
        let db = fdo::DBusProxy::new(&b).await.unwrap();
        let r = da
            .request_name(
                name.try_into().unwrap(),
                fdo::RequestNameFlags::AllowReplacement.into(),
            )
            .await
            .unwrap();
        assert_eq!(r, fdo::RequestNameReply::PrimaryOwner);
        let r = db
            .request_name(
                name.try_into().unwrap(),
                fdo::RequestNameFlags::DoNotQueue.into(),
            )
            .await
            .unwrap();
        assert_eq!(r, fdo::RequestNameReply::Exists);
        let r = db
            .request_name(
                name.try_into().unwrap(),
                fdo::RequestNameFlags::ReplaceExisting.into(),
            )
            .await
            .unwrap();
        assert_eq!(r, fdo::RequestNameReply::PrimaryOwner);
        let queued = dbus
            .list_queued_owners(name.try_into().unwrap())
            .await
            .unwrap();
        let queued: Vec<String> = queued.iter().map(|n| n.to_string()).collect();
        assert_eq!(
            queued,
            vec![
                b.unique_name().unwrap().to_string(),
                a.unique_name().unwrap().to_string()
            ]
        );
        // Seen by the watcher: acquired by a, then moved to b.
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let s = changes.next().await.unwrap();
            let args = s.args().unwrap();
            if args.name().as_str() == name {
                let new = args
                    .new_owner()
                    .as_ref()
                    .map(|n| n.to_string())
                    .unwrap_or_default();
                seen.push(new);
            }
        }
        assert_eq!(
            seen,
            vec![
                a.unique_name().unwrap().to_string(),
                b.unique_name().unwrap().to_string()
            ]
        );
        // b leaves: the name goes back to a.
        drop(db);
        drop(b);
        loop {
            let s = changes.next().await.unwrap();
            let args = s.args().unwrap();
            if args.name().as_str() == name {
                assert_eq!(
                    args.new_owner().as_ref().unwrap().as_str(),
                    a.unique_name().unwrap().as_str()
                );
                break;
            }
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn signals_reach_only_matching_subscribers() {
    let bus = Busd::start();
    timeout(async {
        let emitter = zbus_connect(&bus).await;
        let yes = zbus_connect(&bus).await;
        let no = zbus_connect(&bus).await;
        let rule = |arg0: &'static str| {
            MatchRule::builder()
                .msg_type(zbus::message::Type::Signal)
                .interface("org.example.Sig")
                .unwrap()
                .arg(0, arg0)
                .unwrap()
                .build()
        };
        let mut yes_stream = MessageStream::for_match_rule(rule("wanted"), &yes, None)
            .await
            .unwrap();
        let mut no_stream = MessageStream::for_match_rule(rule("other"), &no, None)
            .await
            .unwrap();
        for i in 0..3u32 {
            emitter
                .emit_signal(
                    None::<()>,
                    "/sig",
                    "org.example.Sig",
                    "Tick",
                    &("wanted", i),
                )
                .await
                .unwrap();
        }
        for i in 0..3u32 {
            let m = yes_stream.next().await.unwrap().unwrap();
            let (s, n): (String, u32) = m.body().deserialize().unwrap();
            assert_eq!((s.as_str(), n), ("wanted", i), "in order");
            assert_eq!(
                m.header().sender().unwrap().as_str(),
                emitter.unique_name().unwrap().as_str()
            );
        }
        let nothing = tokio::time::timeout(Duration::from_millis(300), no_stream.next()).await;
        assert!(
            nothing.is_err(),
            "a non-matching subscriber received the signal"
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn unix_fds_pass_through_the_bus() {
    let bus = Busd::start();
    timeout(async {
        let _service = serve_echo(&bus, "org.example.Fds").await;
        let client = zbus_connect(&bus).await;
        busd_tests::assert_fd_passing(&client, "org.example.Fds").await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_tiny_incoming_limit_slows_senders_but_loses_nothing() {
    // max_incoming_bytes=1: busd reads a sender only while none of its messages wait in a
    // queue, as dbus-daemon's incoming-limit configuration exercises.
    let dir = tempfile::tempdir().unwrap();
    let config = busd_tests::write_config(
        dir.path(),
        "limited.conf",
        &busd_tests::session_config(
            "",
            r#"<limit name="max_incoming_bytes">1</limit>
  <limit name="max_replies_per_connection">1000000</limit>"#,
        ),
    );
    let bus = Busd::start_with(&[&format!("--config-file={}", config.display())]);
    timeout(async {
        let _service = serve_echo(&bus, "org.example.Service").await;
        let client = zbus_connect(&bus).await;
        let calls = (0..500).map(|i| {
            let client = client.clone();
            async move {
                let reply = echo(&client, &i.to_string()).await;
                let text: String = reply.body().deserialize().unwrap();
                assert_eq!(text, format!("echo: {i}"));
            }
        });
        futures_util::future::join_all(calls).await;
    })
    .await
    .unwrap();
}
