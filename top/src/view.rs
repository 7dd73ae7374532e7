//! What busd-top shows, whatever draws it: each connection's row with its rates (the
//! difference of its cumulative counters between two looks, divided by the time between
//! them), in the order and through the filter chosen; the columns, and which of them fit a
//! width; and the plain table of `--once`.

use std::cmp::Ordering;

use crate::snapshot::{unique_order, Connection, Snapshot, Totals, Traffic};

/// Per-second rates of a connection's [`Traffic`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    pub sent_messages: f64,
    pub sent_bytes: f64,
    pub received_messages: f64,
    pub received_bytes: f64,
}

impl Rates {
    fn between(before: &Traffic, now: &Traffic, seconds: f64) -> Rates {
        let per_second = |a: u64, b: u64| b.saturating_sub(a) as f64 / seconds;
        Rates {
            sent_messages: per_second(before.sent_messages, now.sent_messages),
            sent_bytes: per_second(before.sent_bytes, now.sent_bytes),
            received_messages: per_second(before.received_messages, now.received_messages),
            received_bytes: per_second(before.received_bytes, now.received_bytes),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Row {
    pub conn: Connection,
    /// None until two looks at a bus that counts traffic (busd).
    pub rates: Option<Rates>,
}

impl Row {
    /// Whether `filter` (lower case) is part of its names or process.
    fn matches(&self, filter: &str) -> bool {
        let c = &self.conn;
        let mut words = [c.unique.as_str(), c.command.as_deref().unwrap_or("")]
            .into_iter()
            .chain(c.names.iter().map(String::as_str))
            .chain(c.monitor.then_some("monitor"));
        words.any(|w| w.to_lowercase().contains(filter))
    }

    fn messages(&self) -> (f64, u64) {
        let r = self
            .rates
            .map_or(-1.0, |r| r.sent_messages + r.received_messages);
        let t = self
            .conn
            .traffic
            .map_or(0, |t| t.sent_messages + t.received_messages);
        (r, t)
    }

    fn bytes(&self) -> (f64, u64) {
        let r = self.rates.map_or(-1.0, |r| r.sent_bytes + r.received_bytes);
        let t = self
            .conn
            .traffic
            .map_or(0, |t| t.sent_bytes + t.received_bytes);
        (r, t)
    }
}

/// What the rows are sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// The unique name: the order connections came in.
    Unique,
    /// The first well-known name; connections without one last.
    Names,
    Process,
    Rules,
    /// Messages per second sent and received, then the totals.
    Messages,
    /// Bytes per second sent and received, then the totals.
    Bytes,
}

impl SortKey {
    pub fn label(self) -> &'static str {
        match self {
            SortKey::Unique => "unique name",
            SortKey::Names => "well-known names",
            SortKey::Process => "process",
            SortKey::Rules => "match rules",
            SortKey::Messages => "messages",
            SortKey::Bytes => "bytes",
        }
    }

    /// Figures sort largest first, names in alphabetical order.
    fn largest_first(self) -> bool {
        matches!(self, SortKey::Rules | SortKey::Messages | SortKey::Bytes)
    }

    fn compare(self, a: &Row, b: &Row) -> Ordering {
        let by_unique = unique_order(&a.conn.unique).cmp(&unique_order(&b.conn.unique));
        let first = match self {
            SortKey::Unique => Ordering::Equal,
            SortKey::Names => {
                let key = |r: &Row| (r.conn.names.is_empty(), r.conn.names.first().cloned());
                key(a).cmp(&key(b))
            }
            SortKey::Process => a.conn.command.cmp(&b.conn.command),
            SortKey::Rules => b.conn.rules.cmp(&a.conn.rules),
            SortKey::Messages => compare_figures(b.messages(), a.messages()),
            SortKey::Bytes => compare_figures(b.bytes(), a.bytes()),
        };
        first.then(by_unique)
    }
}

fn compare_figures(a: (f64, u64), b: (f64, u64)) -> Ordering {
    a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Order {
    pub key: SortKey,
    pub reversed: bool,
}

impl Order {
    pub fn describe(self) -> String {
        let largest_first = self.key.largest_first() != self.reversed;
        let direction = match (self.key.largest_first(), largest_first) {
            (true, true) => "largest first",
            (true, false) => "smallest first",
            (false, false) => "a-z",
            (false, true) => "z-a",
        };
        format!("{} ({direction})", self.key.label())
    }
}

/// A look at the bus ready to show: rows with their rates.
#[derive(Debug, Clone)]
pub struct View {
    pub totals: Option<Totals>,
    pub monitors: Option<usize>,
    pub rows: Vec<Row>,
}

impl View {
    /// `now`'s rows, with rates against `before` (an earlier look) where both counted.
    pub fn new(now: &Snapshot, before: Option<&Snapshot>) -> View {
        let seconds = before.map_or(0.0, |b| now.taken.duration_since(b.taken).as_secs_f64());
        let rows = now
            .connections
            .iter()
            .map(|c| {
                let earlier = before
                    .and_then(|b| b.connections.iter().find(|e| e.unique == c.unique))
                    .and_then(|e| e.traffic);
                let rates = match (earlier, c.traffic) {
                    (Some(e), Some(n)) if seconds > 0.0 => Some(Rates::between(&e, &n, seconds)),
                    _ => None,
                };
                Row {
                    conn: c.clone(),
                    rates,
                }
            })
            .collect();
        View {
            totals: now.totals.clone(),
            monitors: now.monitors,
            rows,
        }
    }

    /// The rows `filter` (any case) lets through, in `order`.
    pub fn shown(&self, order: Order, filter: &str) -> Vec<&Row> {
        let filter = filter.to_lowercase();
        let mut rows: Vec<&Row> = self.rows.iter().filter(|r| r.matches(&filter)).collect();
        rows.sort_by(|a, b| {
            let o = order.key.compare(a, b);
            if order.reversed {
                o.reverse()
            } else {
                o
            }
        });
        rows
    }

    /// The line of bus-wide figures, the most wanted first (a narrow screen cuts it).
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        match &self.totals {
            Some(t) => parts.extend([
                format!(
                    "connections: {} active, {} authenticating",
                    t.active, t.authenticating
                ),
                format!("names: {}", t.names),
                format!("rules: {}", t.rules),
            ]),
            None => parts.push(format!(
                "connections: {} (the bus has no Debug.Stats)",
                self.rows.len()
            )),
        }
        if let Some(m) = self.monitors {
            parts.push(format!("monitors: {m}"));
        }
        if let Some(t) = &self.totals {
            parts.push(format!(
                "peaks: names {}, rules {}",
                t.peak_names, t.peak_rules
            ));
        }
        parts.join("  ")
    }
}

/// A count in at most five characters.
pub fn count(n: u64) -> String {
    let mut n = n;
    for unit in ["", "k", "M", "G", "T", "P"] {
        if n < 10_000 {
            return format!("{n}{unit}");
        }
        n /= 1000;
    }
    format!("{n}E")
}

/// A rate in at most five characters.
pub fn rate(r: f64) -> String {
    if r == 0.0 {
        "0".into()
    } else if r < 10.0 {
        format!("{r:.1}")
    } else {
        count(r.round() as u64)
    }
}

/// One column of a table.
pub struct Column {
    pub title: &'static str,
    pub width: u16,
    /// Numbers align right.
    pub right: bool,
    /// When the terminal is narrow, columns of the lowest priorities are kept.
    priority: u8,
    pub cell: fn(&Row) -> String,
}

fn traffic(r: &Row, f: fn(&Traffic) -> u64) -> String {
    r.conn.traffic.as_ref().map_or("-".into(), |t| count(f(t)))
}

fn rates(r: &Row, f: fn(&Rates) -> f64) -> String {
    r.rates.as_ref().map_or("-".into(), |t| rate(f(t)))
}

fn optional<T: ToString>(v: Option<T>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

/// The first column of both tables.
const UNIQUE_NAME: Column = Column {
    title: "NAME",
    width: 8,
    right: false,
    priority: 0,
    cell: |r| r.conn.unique.clone(),
};

/// The connections' columns but the last (their well-known names). TX: what the connection
/// sent; RX: what the bus delivered to it.
pub const CONNECTION_COLUMNS: [Column; 12] = [
    UNIQUE_NAME,
    Column {
        title: "PID",
        width: 7,
        right: true,
        priority: 5,
        cell: |r| optional(r.conn.pid),
    },
    Column {
        title: "UID",
        width: 5,
        right: true,
        priority: 8,
        cell: |r| optional(r.conn.uid),
    },
    Column {
        title: "COMMAND",
        width: 12,
        right: false,
        priority: 1,
        cell: |r| r.conn.command.clone().unwrap_or_else(|| "-".into()),
    },
    Column {
        title: "PATH",
        width: 4,
        right: false,
        priority: 7,
        cell: |r| {
            if r.conn.fast_member.is_some() {
                "fast"
            } else {
                "std"
            }
            .into()
        },
    },
    Column {
        title: "RULES",
        width: 5,
        right: true,
        priority: 6,
        cell: |r| optional(r.conn.rules),
    },
    Column {
        title: "TX",
        width: 5,
        right: true,
        priority: 3,
        cell: |r| traffic(r, |t| t.sent_messages),
    },
    Column {
        title: "RX",
        width: 5,
        right: true,
        priority: 3,
        cell: |r| traffic(r, |t| t.received_messages),
    },
    Column {
        title: "TX/s",
        width: 5,
        right: true,
        priority: 2,
        cell: |r| rates(r, |t| t.sent_messages),
    },
    Column {
        title: "RX/s",
        width: 5,
        right: true,
        priority: 2,
        cell: |r| rates(r, |t| t.received_messages),
    },
    Column {
        title: "TXB/s",
        width: 5,
        right: true,
        priority: 4,
        cell: |r| rates(r, |t| t.sent_bytes),
    },
    Column {
        title: "RXB/s",
        width: 5,
        right: true,
        priority: 4,
        cell: |r| rates(r, |t| t.received_bytes),
    },
];

/// The last column of the connections: well-known names, or what a monitor is.
pub const NAMES_TITLE: &str = "WELL-KNOWN NAMES";

pub fn names_cell(r: &Row) -> String {
    if r.conn.monitor {
        "(monitor)".into()
    } else {
        r.conn.names.join(" ")
    }
}

/// The room the names keep before another column is shown.
pub const NAMES_MIN: u16 = 20;

fn fast_figure(r: &Row, key: &str) -> String {
    r.conn.fast.get(key).map_or("-".into(), |&v| count(v))
}

/// The fast-path members' own figures, as each member's shim counts them.
pub const FAST_COLUMNS: [Column; 11] = [
    UNIQUE_NAME,
    Column {
        title: "MEMBER",
        width: 6,
        right: true,
        priority: 9,
        cell: |r| optional(r.conn.fast_member),
    },
    Column {
        title: "DIRECT",
        width: 7,
        right: true,
        priority: 1,
        cell: |r| fast_figure(r, "SentDirect"),
    },
    Column {
        title: "VIA-BUS",
        width: 7,
        right: true,
        priority: 1,
        cell: |r| fast_figure(r, "SentViaDaemon"),
    },
    Column {
        title: "FAN-OUTS",
        width: 8,
        right: true,
        priority: 3,
        cell: |r| fast_figure(r, "FanOuts"),
    },
    Column {
        title: "SKIPPED",
        width: 7,
        right: true,
        priority: 4,
        cell: |r| fast_figure(r, "ReceiversSkipped"),
    },
    Column {
        title: "RECEIVED",
        width: 8,
        right: true,
        priority: 1,
        cell: |r| fast_figure(r, "Received"),
    },
    Column {
        title: "UNWANTED",
        width: 8,
        right: true,
        priority: 5,
        cell: |r| fast_figure(r, "DroppedUnwanted"),
    },
    Column {
        title: "BACKLOG",
        width: 7,
        right: true,
        priority: 2,
        cell: |r| fast_figure(r, "BacklogDepth"),
    },
    Column {
        title: "DROPPED",
        width: 7,
        right: true,
        priority: 2,
        cell: |r| {
            [
                "DroppedSpoofed",
                "DroppedMalformed",
                "DroppedNotDirect",
                "RejectedFullQueue",
            ]
            .iter()
            .map(|k| r.conn.fast.get(*k).copied())
            .sum::<Option<u64>>()
            .map_or("-".into(), count)
        },
    },
    Column {
        title: "WAITS",
        width: 7,
        right: true,
        priority: 6,
        cell: |r| fast_figure(r, "CausalWaits"),
    },
];

pub const FAST_TITLE: &str = "fast path (as each member's shim counts)";

/// The columns of `columns` that fit in `width` (with one space after each) when `rest`
/// is kept for a last column: whole priorities, the lowest first; the first always.
pub fn fitting(columns: &'static [Column], width: u16, rest: u16) -> Vec<&'static Column> {
    let mut priorities: Vec<u8> = columns.iter().map(|c| c.priority).collect();
    priorities.sort_unstable();
    priorities.dedup();
    let mut used = rest;
    let mut kept = Vec::new();
    for p in priorities {
        let more: u16 = columns
            .iter()
            .filter(|c| c.priority == p)
            .map(|c| c.width + 1)
            .sum();
        if used + more > width && !kept.is_empty() {
            break;
        }
        used += more;
        kept.push(p);
    }
    columns
        .iter()
        .filter(|c| kept.contains(&c.priority))
        .collect()
}

/// One line of a plain table: each cell padded to its column (never cut), then `last`.
fn text_line<'a>(cells: impl Iterator<Item = (&'a Column, String)>, last: Option<&str>) -> String {
    let mut line: Vec<String> = cells
        .map(|(c, s)| {
            let w = usize::from(c.width);
            if c.right {
                format!("{s:>w$}")
            } else {
                format!("{s:<w$}")
            }
        })
        .collect();
    line.extend(last.map(str::to_string));
    line.join(" ").trim_end().to_string()
}

/// The plain table of `--once`: every column, nothing cut.
pub fn text(view: &View, order: Order, filter: &str) -> String {
    let rows = view.shown(order, filter);
    let mut out = format!("{}\n\n", view.summary());
    let titles = |columns: &'static [Column]| columns.iter().map(|c| (c, c.title.to_string()));
    out.push_str(&text_line(titles(&CONNECTION_COLUMNS), Some(NAMES_TITLE)));
    out.push('\n');
    for r in &rows {
        let cells = CONNECTION_COLUMNS.iter().map(|c| (c, (c.cell)(r)));
        out.push_str(&text_line(cells, Some(&names_cell(r))));
        out.push('\n');
    }
    let fast: Vec<&&Row> = rows
        .iter()
        .filter(|r| r.conn.fast_member.is_some())
        .collect();
    if !fast.is_empty() {
        out.push_str(&format!("\n{FAST_TITLE}\n"));
        out.push_str(&text_line(titles(&FAST_COLUMNS), None));
        out.push('\n');
        for r in fast {
            let cells = FAST_COLUMNS.iter().map(|c| (c, (c.cell)(r)));
            out.push_str(&text_line(cells, None));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn conn(unique: &str, names: &[&str], traffic: Option<Traffic>) -> Connection {
        Connection {
            unique: unique.into(),
            names: names.iter().map(|n| n.to_string()).collect(),
            traffic,
            ..Default::default()
        }
    }

    fn sent(messages: u64) -> Option<Traffic> {
        Some(Traffic {
            sent_messages: messages,
            sent_bytes: messages * 100,
            ..Default::default()
        })
    }

    fn snapshot(taken: Instant, connections: Vec<Connection>) -> Snapshot {
        Snapshot {
            taken,
            totals: None,
            monitors: None,
            connections,
        }
    }

    #[test]
    fn rates_are_the_counters_difference_over_the_time_between_looks() {
        let t0 = Instant::now();
        let before = snapshot(
            t0,
            vec![conn(":1.1", &[], sent(10)), conn(":1.2", &[], sent(0))],
        );
        let now = snapshot(
            t0 + Duration::from_secs(2),
            vec![
                conn(":1.1", &[], sent(30)),
                conn(":1.2", &[], sent(0)),
                conn(":1.3", &[], sent(5)),
                conn(":1.4", &[], None),
            ],
        );
        let v = View::new(&now, Some(&before));
        let r = |i: usize| v.rows[i].rates;
        assert_eq!(r(0).unwrap().sent_messages, 10.0);
        assert_eq!(r(0).unwrap().sent_bytes, 1000.0);
        assert_eq!(r(1).unwrap().sent_messages, 0.0);
        assert_eq!(r(2), None, "new since the last look");
        assert_eq!(r(3), None, "a bus that does not count");
        assert!(View::new(&now, None).rows.iter().all(|r| r.rates.is_none()));
    }

    #[test]
    fn sorting_and_filtering() {
        let t0 = Instant::now();
        let conns = |f: u64| {
            vec![
                conn(":1.10", &["org.b"], sent(f)),
                conn(":1.2", &[], sent(3 * f)),
                conn(":1.3", &["org.a", "org.c"], sent(2 * f)),
            ]
        };
        let before = snapshot(t0, conns(1));
        let v = View::new(
            &snapshot(t0 + Duration::from_secs(1), conns(2)),
            Some(&before),
        );
        let cases: [(SortKey, bool, &str, &[&str]); 5] = [
            (SortKey::Unique, false, "", &[":1.2", ":1.3", ":1.10"]),
            (SortKey::Messages, false, "", &[":1.2", ":1.3", ":1.10"]),
            (SortKey::Messages, true, "", &[":1.10", ":1.3", ":1.2"]),
            (SortKey::Names, false, "", &[":1.3", ":1.10", ":1.2"]),
            (SortKey::Unique, false, "ORG.C", &[":1.3"]),
        ];
        for (key, reversed, filter, expected) in cases {
            let shown = v.shown(Order { key, reversed }, filter);
            let names: Vec<&str> = shown.iter().map(|r| r.conn.unique.as_str()).collect();
            assert_eq!(names, expected, "{key:?} {reversed} {filter:?}");
        }
        let order = |key, reversed| Order { key, reversed };
        assert_eq!(
            order(SortKey::Bytes, true).describe(),
            "bytes (smallest first)"
        );
    }

    #[test]
    fn narrow_terminals_keep_the_most_important_columns() {
        let titles = |w| {
            fitting(&CONNECTION_COLUMNS, w, NAMES_MIN)
                .iter()
                .map(|c| c.title)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            titles(80),
            ["NAME", "COMMAND", "TX", "RX", "TX/s", "RX/s", "TXB/s", "RXB/s"]
        );
        assert_eq!(titles(10), ["NAME"]);
        assert_eq!(titles(200).len(), CONNECTION_COLUMNS.len());
        let width: u16 = fitting(&CONNECTION_COLUMNS, 80, NAMES_MIN)
            .iter()
            .map(|c| c.width + 1)
            .sum();
        assert!(width + NAMES_MIN <= 80);
    }

    #[test]
    fn figures_fit_five_characters() {
        for n in [0, 9_999, 10_000, 9_999_999, 123_456_789_012, u64::MAX] {
            assert!(count(n).len() <= 5, "{n}: {}", count(n));
        }
        assert_eq!(rate(0.0), "0");
        assert_eq!(rate(2.25), "2.2");
        assert_eq!(rate(1234.4), "1234");
    }
}
