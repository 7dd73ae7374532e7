//! Measures the bloom filter's false-positive rate for candidate sizes and hash counts,
//! with as many entries as real messages put in it:
//! `cargo run --release -p busd-match --example bloom_fp`. Read, not a test.

use busd_match::header::bloom_positions_with;

fn main() {
    // A signal on /org/freedesktop/NetworkManager/Devices/3 with interface, member and two
    // string arguments of three dot-separated parts carries about 14 entries; a message with
    // many arguments and deep paths, 30-40.
    let entry_counts = [8usize, 14, 24, 40];
    let probes = 200_000u32;
    println!(
        "| bits | hashes | {} |",
        entry_counts.map(|n| format!("{n} entries")).join(" | ")
    );
    println!("|---|---|{}", "---|".repeat(entry_counts.len()));
    for bits in [256u32, 512, 1024] {
        for hashes in [4u32, 6, 8, 10] {
            let mut row = Vec::new();
            for &n in &entry_counts {
                let mut set = vec![false; bits as usize];
                for e in 0..n {
                    for p in bloom_positions_with("member:", &format!("entry-{e}"), bits, hashes) {
                        set[p as usize] = true;
                    }
                }
                let fp = (0..probes)
                    .filter(|i| {
                        bloom_positions_with("member:", &format!("probe-{i}"), bits, hashes)
                            .all(|p| set[p as usize])
                    })
                    .count();
                row.push(format!("{:.5}%", 100.0 * fp as f64 / f64::from(probes)));
            }
            println!("| {bits} | {hashes} | {} |", row.join(" | "));
        }
    }
}
