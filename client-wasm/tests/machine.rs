//! The client's core, natively: every scenario of the browser tests that
//! does not need a real socket, plus what only a fake clock can check
//! (timeouts, backoff and jitter, `minUptime`).

#![cfg(not(target_arch = "wasm32"))]

#[path = "common/answers.rs"]
mod answers;
mod common;

use agents_client::action::{Action, Close, Event, Out, Outcome, Source};
use agents_client::machine::{Core, Timeout, BACKOFF, CONNECT, UPTIME};
use agents_client::options::{Query, DEFAULT_CALL_TIMEOUT};
use agents_client::ClientError;
use common::*;

#[test]
fn starts_by_opening_the_reference_url() {
    let mut o = options();
    o.id = Some("pk-1".into());
    o.query = Query::Static(vec![("token".into(), "a b".into())]);
    let mut core: TestCore = Core::new(o, 1).unwrap();
    core.start(true);
    let actions = core.take_actions();
    assert_eq!(
        actions[0],
        Action::Init {
            id: "pk-1".into(),
            agent: "counter-agent".into(),
            name: "room".into()
        }
    );
    assert_eq!(actions[1], Action::Watch(true));
    assert_eq!(
        opens(&actions),
        [(
            1,
            "ws://127.0.0.1:8787/agents/counter-agent/room?_pk=pk-1&token=a+b".into()
        )]
    );
    assert_eq!(timers(&actions), [(CONNECT, 4000.0)]);
    assert_eq!(core.ready_state(Some(0)), 0, "the socket's own state");
    // A generated id is UUID-shaped and kept.
    let mut other: TestCore = Core::new(options(), 2).unwrap();
    other.start(true);
    assert_eq!(other.id().len(), 36);
}

/// Starting opens exactly one socket, online or not (a second one would
/// be orphaned: it leaked sockets before this test).
#[test]
fn start_opens_one_socket() {
    for online in [true, false] {
        let mut core: TestCore = Core::new(options(), 1).unwrap();
        core.start(online);
        assert_eq!(opens(&core.take_actions()).len(), 1, "online: {online}");
    }
}

#[test]
fn start_closed_waits_for_reconnect() {
    let mut o = options();
    o.start_closed = true;
    let mut core: TestCore = Core::new(o, 1).unwrap();
    core.start(true);
    let actions = core.take_actions();
    assert!(opens(&actions).is_empty());
    assert_eq!(core.ready_state(None), 3);
    assert!(!core.should_reconnect());
    core.reconnect(1000, "");
    assert_eq!(opens(&core.take_actions()).len(), 1);
    assert_eq!(core.ready_state(Some(0)), 0);
    // Before any socket (a query function still running): CONNECTING.
    let mut o = options();
    o.query = Query::Dynamic;
    let mut core: TestCore = Core::new(o, 1).unwrap();
    core.start(true);
    assert_eq!(core.ready_state(None), 0);
}

/// The reference flushes the queue before `open`: every queued frame is
/// written, in order, before the event, and nothing is left counted in
/// `bufferedAmount` when listeners run.
#[test]
fn queued_sends_flush_in_order_before_open() {
    let mut core = started(|_| {});
    for m in ["m1", "m2", "ñ3"] {
        assert_eq!(
            core.send(m.into(), m.encode_utf16().count() as f64),
            Ok(false)
        );
    }
    assert_eq!(core.queued(), 6.0);
    core.call("increment", "[1]", Timeout::Default, false, 9);
    core.take_actions();
    core.opened(1);
    let actions = core.take_actions();
    let open_at = actions
        .iter()
        .position(|a| *a == Action::Emit(Event::Open))
        .unwrap();
    let sends = sent(&actions[..open_at]);
    assert_eq!(sends[..3], ["m1", "m2", "ñ3"]);
    assert!(
        sends[3].starts_with(r#"{"args":[1],"id":""#),
        "{}",
        sends[3]
    );
    assert!(sent(&actions[open_at..]).is_empty());
    assert_eq!(core.queued(), 0.0);
    assert!(timers(&actions).contains(&(UPTIME, 5000.0)));
    // Open now: sends go out at once.
    assert_eq!(core.send("now".into(), 3.0), Ok(true));
    assert_eq!(sent(&core.take_actions()), ["now"]);
}

#[test]
fn the_queue_is_bounded() {
    let mut core = started(|o| o.max_enqueued_messages = 2);
    assert_eq!(core.send("a".into(), 1.0), Ok(false));
    assert_eq!(core.send("b".into(), 1.0), Ok(false));
    assert_eq!(core.send("c".into(), 1.0), Err(ClientError::QueueFull));
    core.call("m", "[]", Timeout::Default, false, 1);
    let actions = core.take_actions();
    assert_eq!(
        settled(&actions),
        [(1, Outcome::Error(ClientError::QueueFull))]
    );
}

#[test]
fn identity_waits_for_the_state_that_follows() {
    let mut core = open(|_| {});
    let actions = receive(
        &mut core,
        1,
        r#"{"type":"cf_agent_identity","name":"room","agent":"counter-agent","stateFollows":true}"#,
    );
    assert!(actions.is_empty(), "held until the state: {actions:?}");
    let actions = receive(
        &mut core,
        1,
        r#"{"type":"cf_agent_state","state":{"count":0}}"#,
    );
    assert_eq!(
        actions,
        [
            Action::State(r#"{"count":0}"#.into(), Source::Server),
            Action::Identity {
                name: "room".into(),
                agent: "counter-agent".into()
            }
        ]
    );
    // Without stateFollows (older servers, agents without state): at once.
    let mut core = open(|_| {});
    let actions = receive(
        &mut core,
        1,
        r#"{"type":"cf_agent_identity","name":"a","agent":"echo-agent"}"#,
    );
    assert!(matches!(actions[..], [Action::Identity { .. }]));
    // The MCP frame goes to its callback; the state error to its own.
    let actions = receive(
        &mut core,
        1,
        r#"{"mcp":{"prompts":[],"resources":[],"servers":{},"tools":[]},"type":"cf_agent_mcp_servers"}"#,
    );
    assert!(matches!(actions[..], [Action::Mcp(_)]));
    let actions = receive(
        &mut core,
        1,
        r#"{"type":"cf_agent_state_error","error":"Connection is readonly"}"#,
    );
    assert_eq!(
        actions,
        [Action::StateError("Connection is readonly".into())]
    );
}

#[test]
fn a_new_identity_after_reconnect_calls_back_or_warns() {
    for callback in [true, false] {
        let mut core = open(|o| o.on_identity_change = callback);
        receive(
            &mut core,
            1,
            r#"{"type":"cf_agent_identity","name":"a","agent":"x"}"#,
        );
        core.closed(1, 1006, "", false);
        let actions = core.take_actions();
        assert!(actions.contains(&Action::Unready));
        core.timer(BACKOFF);
        core.opened(2);
        core.take_actions();
        receive(
            &mut core,
            2,
            r#"{"type":"cf_agent_identity","name":"a","agent":"x"}"#,
        );
        let actions = receive(
            &mut core,
            2,
            r#"{"type":"cf_agent_identity","name":"b","agent":"x"}"#,
        );
        assert_eq!(
            actions[1],
            Action::IdentityChange {
                old_name: "a".into(),
                new_name: "b".into(),
                old_agent: "x".into(),
                new_agent: "x".into(),
                callback
            }
        );
    }
}

/// Calls: the frame, results, server errors, streams, and answers nobody
/// asked for.
#[test]
fn calls_resolve_fail_and_stream() {
    let mut core = open(|_| {});
    core.call("increment", "[2]", Timeout::Default, false, 1);
    let frame = sent(&core.take_actions()).remove(0);
    let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
    assert_eq!(v["type"], "rpc");
    assert_eq!(v["method"], "increment");
    assert_eq!(v["args"], serde_json::json!([2]));
    assert!(
        frame.starts_with(r#"{"args":[2],"id":""#),
        "key order: {frame}"
    );
    let id = v["id"].as_str().unwrap().to_owned();
    let answer = format!(r#"{{"done":true,"id":"{id}","result":2,"success":true,"type":"rpc"}}"#);
    let actions = receive(&mut core, 1, &answer);
    assert_eq!(settled(&actions), [(1, Outcome::Done(Some("2".into())))]);
    // The same answer again settles nothing.
    assert!(settled(&receive(&mut core, 1, &answer)).is_empty());

    core.call("nope", "[]", Timeout::Default, false, 2);
    let id = call_id(&mut core);
    let actions = receive(
        &mut core,
        1,
        &format!(
            r#"{{"error":"Method nope does not exist","id":"{id}","success":false,"type":"rpc"}}"#
        ),
    );
    assert_eq!(
        settled(&actions),
        [(
            2,
            Outcome::Error(ClientError::Rpc("Method nope does not exist".into()))
        )]
    );

    core.call("count_to", "[3]", Timeout::Default, true, 3);
    let actions = core.take_actions();
    assert!(
        timers(&actions).is_empty(),
        "streaming calls get no default timeout"
    );
    let id = call_id_in(&actions);
    let mut got = Vec::new();
    for n in 1..3 {
        let chunk =
            format!(r#"{{"done":false,"id":"{id}","result":{n},"success":true,"type":"rpc"}}"#);
        got.extend(settled(&receive(&mut core, 1, &chunk)));
    }
    let end = format!(r#"{{"done":true,"id":"{id}","result":3,"success":true,"type":"rpc"}}"#);
    got.extend(settled(&receive(&mut core, 1, &end)));
    assert_eq!(
        got,
        [
            (3, Outcome::Chunk(Some("1".into()))),
            (3, Outcome::Chunk(Some("2".into()))),
            (3, Outcome::Done(Some("3".into())))
        ]
    );
    // An answer without `success` fails the call, as the reference's.
    core.call("m", "[]", Timeout::Default, false, 4);
    let id = call_id(&mut core);
    let actions = receive(&mut core, 1, &format!(r#"{{"id":"{id}","type":"rpc"}}"#));
    assert_eq!(
        settled(&actions),
        [(4, Outcome::Error(ClientError::Rpc("Unknown error".into())))]
    );
}

fn call_id_in(actions: &[TestAction]) -> String {
    let frame = sent(actions).remove(0);
    let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
    v["id"].as_str().unwrap().to_owned()
}

fn call_id(core: &mut TestCore) -> String {
    call_id_in(&core.take_actions())
}

/// The reference's 30 s default, checked with the core's timers instead of
/// a clock: the call starts a 30 000 ms timer, and its firing fails the
/// call with the reference's message.
#[test]
fn calls_time_out_after_30_seconds_by_default() {
    assert_eq!(DEFAULT_CALL_TIMEOUT, 30_000.0);
    let mut core = open(|_| {});
    core.call("slow", "[]", Timeout::Default, false, 1);
    let actions = core.take_actions();
    let [(timer, ms)] = timers(&actions)[..] else {
        panic!("{actions:?}")
    };
    assert_eq!(ms, 30_000.0);
    core.timer(timer);
    assert_eq!(
        settled(&core.take_actions()),
        [(
            1,
            Outcome::Error(ClientError::Timeout {
                method: "slow".into(),
                ms: 30_000
            })
        )]
    );
    assert_eq!(
        ClientError::Timeout {
            method: "slow".into(),
            ms: 30_000
        }
        .to_string(),
        "RPC call to slow timed out after 30000ms"
    );
    // An explicit timeout wins, 0 disables, `defaultCallTimeout` changes it.
    core.call("m", "[]", Timeout::Ms(50.0), true, 2);
    assert_eq!(timers(&core.take_actions())[0].1, 50.0);
    core.call("m", "[]", Timeout::Ms(0.0), false, 3);
    assert!(timers(&core.take_actions()).is_empty());
    let mut core = open(|o| o.default_call_timeout = 150.0);
    core.call("m", "[]", Timeout::Default, false, 1);
    assert_eq!(timers(&core.take_actions())[0].1, 150.0);
    // An answer in time cancels the timer.
    let mut core = open(|_| {});
    core.call("m", "[]", Timeout::Default, false, 1);
    let actions = core.take_actions();
    let (timer, _) = timers(&actions)[0];
    let id = call_id_in(&actions);
    let actions = receive(
        &mut core,
        1,
        &format!(r#"{{"id":"{id}","success":true,"type":"rpc"}}"#),
    );
    assert!(actions.contains(&Action::Timer {
        id: timer,
        ms: -1.0
    }));
}

/// A transient close fails the calls written to that socket (their answer
/// can never come); queued calls and sends survive to the next socket.
#[test]
fn a_transient_close_rejects_only_sent_calls() {
    let mut core = open(|_| {});
    core.call("sent", "[]", Timeout::Ms(0.0), false, 1);
    core.take_actions();
    core.closed(1, 1006, "", false);
    let actions = core.take_actions();
    assert_eq!(
        settled(&actions),
        [(1, Outcome::Error(ClientError::ConnectionClosed))]
    );
    assert_eq!(events(&actions), [close_event(1006, "", false)]);
    assert_eq!(
        actions[0],
        Action::Shut {
            code: 1000,
            reason: String::new()
        }
    );
    assert!(core.should_reconnect());
    assert_eq!(core.ready_state(None), 3, "CLOSED between attempts");
    core.call("queued", "[]", Timeout::Ms(0.0), false, 2);
    assert_eq!(core.send("m1".into(), 2.0), Ok(false));
    core.take_actions();
    core.timer(BACKOFF);
    assert_eq!(opens(&core.take_actions())[0].0, 2);
    core.opened(2);
    let actions = core.take_actions();
    let sends = sent(&actions);
    assert!(sends[0].contains(r#""method":"queued""#), "{sends:?}");
    assert_eq!(sends[1], "m1");
    assert!(settled(&actions).is_empty());
}

/// Backoff: the reference's growing schedule with full jitter, so clients
/// that lost the same server do not return in lockstep.
#[test]
fn backoff_grows_with_full_jitter() {
    let bases = [3000.0, 3900.0, 5070.0, 6591.0, 8568.3, 10000.0, 10000.0];
    let mut delays = vec![Vec::new(); bases.len()];
    for seed in 0..200 {
        let mut o = options();
        o.reconnect.max_retries = f64::INFINITY;
        let mut core: TestCore = Core::new(o, seed).unwrap();
        core.start(true);
        core.take_actions();
        for (attempt, gen) in (1..=bases.len() as u32).enumerate() {
            core.closed(gen, 1006, "", false);
            let delay = backoff(&core.take_actions()).unwrap();
            delays[attempt].push(delay);
            core.timer(BACKOFF);
            core.take_actions();
        }
    }
    for (delays, base) in delays.iter().zip(bases) {
        assert!(
            delays.iter().all(|d| (0.0..=base).contains(d)),
            "{base}: {delays:?}"
        );
        let mean = delays.iter().sum::<f64>() / delays.len() as f64;
        // Uniform on [0, base]: mean near base / 2, and spread out.
        assert!(
            (mean - base / 2.0).abs() < base * 0.1,
            "{base}: mean {mean}"
        );
        let max = delays.iter().cloned().fold(0.0, f64::max);
        let min = delays.iter().cloned().fold(f64::MAX, f64::min);
        assert!(max - min > base * 0.8, "{base}: {min}..{max}");
    }
}

#[test]
fn a_stable_connection_resets_the_retry_count() {
    let mut core = open(|_| {});
    for gen in 1..4 {
        core.closed(gen, 1006, "", false);
        core.timer(BACKOFF);
        core.opened(gen + 1);
        core.take_actions();
    }
    assert_eq!(core.retry_count(), 3);
    core.timer(UPTIME);
    assert_eq!(core.retry_count(), 0);
}

#[test]
fn terminal_closes_stop_and_report_until_reconnect() {
    for code in [1008, 4000, 4001, 4999] {
        let mut core = open(|_| {});
        core.call("queued-too", "[]", Timeout::Ms(0.0), false, 1);
        core.closed(1, code, "Unauthorized", true);
        let actions = core.take_actions();
        assert_eq!(backoff(&actions), None, "{code}: no retry");
        assert!(actions.contains(&Action::ConnectionError(Some(Close::new(
            code,
            "Unauthorized",
            true
        )))));
        assert!(actions.contains(&Action::Watch(false)));
        assert_eq!(
            settled(&actions),
            [(1, Outcome::Error(ClientError::ConnectionClosed))]
        );
        assert!(!core.should_reconnect());
        core.call("after", "[]", Timeout::Default, false, 2);
        assert_eq!(
            settled(&core.take_actions()),
            [(2, Outcome::Error(ClientError::ConnectionClosed))]
        );
        core.reconnect(1000, "");
        let actions = core.take_actions();
        assert!(actions.contains(&Action::ConnectionError(None)));
        assert_eq!(opens(&actions).len(), 1);
    }
}

/// `shouldReconnectOnClose` answering false (the class then reports the
/// close with `closed_for_good`) stops reconnecting as a terminal code
/// does, whatever the code; `reconnect()` starts again; after the user's
/// own `close()` it reports nothing.
#[test]
fn a_close_the_user_refuses_to_retry_stops_like_a_terminal_code() {
    let mut core = open(|_| {});
    core.call("pending", "[]", Timeout::Ms(0.0), false, 1);
    core.closed_for_good(1, 1006, "", false);
    let actions = core.take_actions();
    assert_eq!(backoff(&actions), None, "no retry");
    assert!(actions.contains(&Action::ConnectionError(Some(Close::new(1006, "", false)))));
    assert_eq!(
        settled(&actions),
        [(1, Outcome::Error(ClientError::ConnectionClosed))]
    );
    assert!(!core.should_reconnect());
    core.reconnect(1000, "");
    let actions = core.take_actions();
    assert!(actions.contains(&Action::ConnectionError(None)));
    assert_eq!(opens(&actions).len(), 1);
    // A connection timeout asks too (the class, with the reference's
    // synthetic 1000 `timeout`): refused, the attempt fails for good.
    let mut core = started(|_| {});
    core.take_actions();
    core.timed_out_for_good();
    let actions = core.take_actions();
    assert_eq!(backoff(&actions), None, "no retry after a refused timeout");
    assert!(actions.contains(&Action::ConnectionError(Some(Close::new(
        1006, "timeout", false
    )))));
    assert!(!core.should_reconnect());
    // The same answer for a close the user made: no connection error.
    let mut core = open(|_| {});
    core.close(1000, "");
    core.take_actions();
    core.closed_for_good(1, 1000, "", true);
    assert!(!core
        .take_actions()
        .iter()
        .any(|a| matches!(a, Action::ConnectionError(_))));
}

#[test]
fn max_retries_counts_retries_after_the_first_attempt() {
    let mut core = started(|o| o.reconnect.max_retries = 2.0);
    let mut attempts = 1;
    for gen in 1.. {
        core.closed(gen, 1006, "", false);
        let actions = core.take_actions();
        if backoff(&actions).is_none() {
            assert!(matches!(
                actions
                    .iter()
                    .find(|a| matches!(a, Action::ConnectionError(_))),
                Some(Action::ConnectionError(Some(_)))
            ));
            break;
        }
        core.timer(BACKOFF);
        assert_eq!(opens(&core.take_actions()).len(), 1);
        core.opened(gen + 1);
        core.take_actions();
        attempts += 1;
    }
    assert_eq!(attempts, 3);
}

/// `close()`: everything pending fails at once, `close` is dispatched
/// synchronously with the given code, nothing reconnects, sends wait for
/// `reconnect()` (with one warning).
#[test]
fn close_is_synchronous_and_final_until_reconnect() {
    let mut core = open(|_| {});
    core.call("pending", "[]", Timeout::Default, false, 1);
    core.take_actions();
    core.close(4000, "done here");
    let actions = core.take_actions();
    assert_eq!(
        settled(&actions),
        [(1, Outcome::Error(ClientError::ConnectionClosed))]
    );
    assert!(actions.contains(&Action::Shut {
        code: 4000,
        reason: "done here".into()
    }));
    assert_eq!(events(&actions), [close_event(4000, "done here", true)]);
    assert_eq!(core.ready_state(Some(1)), 3);
    // The socket's own late close event changes nothing.
    core.closed(1, 4000, "done here", true);
    assert!(core.take_actions().is_empty());
    core.call("late", "[]", Timeout::Default, false, 2);
    assert_eq!(
        settled(&core.take_actions()),
        [(2, Outcome::Error(ClientError::ConnectionClosed))]
    );
    assert_eq!(core.send("later".into(), 5.0), Ok(false));
    assert!(matches!(core.take_actions()[..], [Action::Warn(_)]));
    assert_eq!(core.send("again".into(), 5.0), Ok(false));
    assert!(core.take_actions().is_empty(), "warns once");
    core.reconnect(1000, "");
    let (gen, _) = opens(&core.take_actions())[0];
    core.opened(gen);
    assert_eq!(sent(&core.take_actions()), ["later", "again"]);
}

/// `reconnect()` on a live socket closes it (synchronous `close`) and fails
/// the calls written to it.
#[test]
fn reconnect_replaces_a_live_socket() {
    let mut core = open(|_| {});
    core.call("sent", "[]", Timeout::Ms(0.0), false, 1);
    core.take_actions();
    core.reconnect(1000, "");
    let actions = core.take_actions();
    assert_eq!(
        settled(&actions),
        [(1, Outcome::Error(ClientError::ConnectionClosed))]
    );
    assert_eq!(events(&actions), [close_event(1000, "", true)]);
    assert_eq!(opens(&actions)[0].0, 2);
    // Events of the old socket are ignored.
    core.closed(1, 1006, "", false);
    assert!(core.take_actions().is_empty());
}

#[test]
fn offline_waits_for_online_without_using_retries() {
    let mut core = open(|o| o.reconnect.max_retries = 0.0);
    core.network(false);
    core.closed(1, 1006, "", false);
    let actions = core.take_actions();
    assert_eq!(backoff(&actions), None, "no timer while offline");
    assert!(!actions
        .iter()
        .any(|a| matches!(a, Action::ConnectionError(Some(_)))));
    assert!(core.should_reconnect());
    core.network(true);
    assert_eq!(
        opens(&core.take_actions())[0].0,
        2,
        "online reconnects at once"
    );
}

#[test]
fn a_client_that_starts_offline_still_tries_then_waits_for_online() {
    let mut o = options();
    o.reconnect.min_reconnection_delay = 60_000.0;
    o.reconnect.max_reconnection_delay = 60_000.0;
    let mut core: TestCore = Core::new(o, 3).unwrap();
    core.start(false);
    assert_eq!(
        opens(&core.take_actions()).len(),
        1,
        "navigator.onLine can be wrong"
    );
    core.closed(1, 1006, "", false);
    assert_eq!(backoff(&core.take_actions()), None);
    core.visible(true);
    assert!(opens(&core.take_actions()).is_empty(), "still offline");
    core.network(true);
    assert_eq!(opens(&core.take_actions())[0].0, 2);
}

#[test]
fn a_tab_that_becomes_visible_reconnects_a_dead_socket_at_once() {
    let mut core = open(|o| {
        o.reconnect.min_reconnection_delay = 60_000.0;
        o.reconnect.max_reconnection_delay = 60_000.0;
    });
    core.visible(true);
    assert!(
        core.take_actions().is_empty(),
        "a live socket is left alone"
    );
    core.closed(1, 1006, "", false);
    assert!(backoff(&core.take_actions()).is_some());
    core.visible(false);
    assert!(core.take_actions().is_empty());
    core.visible(true);
    let actions = core.take_actions();
    assert!(actions.contains(&Action::Timer {
        id: BACKOFF,
        ms: -1.0
    }));
    assert_eq!(opens(&actions)[0].0, 2);
    // After close() nothing wakes it.
    core.close(1000, "");
    core.take_actions();
    core.visible(true);
    core.network(true);
    assert!(opens(&core.take_actions()).is_empty());
}

#[test]
fn an_attempt_that_does_not_open_in_time_fails_and_retries() {
    let mut core = started(|_| {});
    core.timer(CONNECT);
    let actions = core.take_actions();
    assert_eq!(
        actions[0],
        Action::Shut {
            code: 1000,
            reason: "timeout".into()
        }
    );
    assert_eq!(
        events(&actions),
        [Event::Error, close_event(1006, "timeout", false)]
    );
    assert!(backoff(&actions).is_some());
    // A socket the browser refuses fails the same way.
    core.timer(BACKOFF);
    core.take_actions();
    core.open_failed(2);
    let actions = core.take_actions();
    assert_eq!(
        events(&actions),
        [Event::Error, close_event(1006, "invalid url", false)]
    );
    // Late timers of an open socket do nothing.
    let mut core = open(|_| {});
    core.timer(CONNECT);
    core.timer(BACKOFF);
    assert!(core.take_actions().is_empty());
}

/// A `query` function runs before every attempt (fresh tokens); a result
/// for an older attempt is ignored; a failure counts as a failed attempt.
#[test]
fn the_query_function_runs_before_every_attempt() {
    let mut o = options();
    o.query = Query::Dynamic;
    o.id = Some("id".into());
    let mut core: TestCore = Core::new(o, 5).unwrap();
    core.start(true);
    let actions = core.take_actions();
    assert!(actions.contains(&Action::Query(1)));
    assert!(opens(&actions).is_empty());
    core.queried(1, Ok(vec![("token".into(), "t1".into())]));
    assert_eq!(
        opens(&core.take_actions()),
        [(
            1,
            "ws://127.0.0.1:8787/agents/counter-agent/room?_pk=id&token=t1".into()
        )]
    );
    core.opened(1);
    core.closed(1, 1006, "", false);
    core.timer(BACKOFF);
    assert!(core.take_actions().contains(&Action::Query(2)));
    core.queried(1, Ok(vec![("token".into(), "stale".into())]));
    assert!(core.take_actions().is_empty(), "stale result");
    core.queried(2, Err(()));
    let actions = core.take_actions();
    assert_eq!(
        events(&actions),
        [Event::Error, close_event(1006, "query failed", false)]
    );
    core.timer(BACKOFF);
    assert!(core.take_actions().contains(&Action::Query(3)));
    core.queried(3, Ok(vec![("token".into(), "t3".into())]));
    assert!(opens(&core.take_actions())[0].1.ends_with("token=t3"));
}

#[test]
fn set_state_sends_and_applies_at_once() {
    let mut core = open(|_| {});
    core.set_state(r#"{"count":41}"#, "s41".into()).unwrap();
    let actions = core.take_actions();
    assert_eq!(
        actions,
        [
            Action::Send(Out::Frame(
                r#"{"state":{"count":41},"type":"cf_agent_state"}"#.into()
            )),
            Action::State("s41".into(), Source::Client)
        ]
    );
}

/// Frames that are not protocol frames, or are malformed ones, change
/// nothing and still go to the listeners; frames of an old socket do not.
#[test]
fn hostile_frames_change_nothing() {
    let mut core = open(|_| {});
    core.call("m", "[]", Timeout::Ms(0.0), false, 1);
    core.take_actions();
    for text in answers::HOSTILE {
        assert!(receive(&mut core, 1, text).is_empty(), "{text}");
    }
    assert!(!core.frame(0, sort(r#"{"type":"cf_agent_state","state":1}"#)));
    assert!(core.take_actions().is_empty());
}

#[test]
fn ready_state_follows_the_socket_and_close() {
    let mut core = started(|_| {});
    assert_eq!(core.ready_state(Some(0)), 0);
    core.opened(1);
    assert_eq!(core.ready_state(Some(1)), 1);
    core.closed(1, 1006, "", false);
    assert_eq!(core.ready_state(None), 3);
    core.close(1000, "");
    assert_eq!(core.ready_state(None), 3);
}

#[test]
fn agent_fetch_url() {
    let core = started(|o| o.query = Query::Static(vec![("k".into(), "v".into())]));
    assert_eq!(
        core.http_url(vec![]).unwrap(),
        "http://127.0.0.1:8787/agents/counter-agent/room?k=v"
    );
    let core = started(|o| o.query = Query::Dynamic);
    assert_eq!(
        core.http_url(vec![("t".into(), "1".into())]).unwrap(),
        "http://127.0.0.1:8787/agents/counter-agent/room?t=1"
    );
}
