//! A classic BPF interpreter with the kernel's semantics (net/core/filter.c as seen from a
//! socket filter): runs compiled programs on frames in tests, without a kernel.

use crate::bpf::*;

/// Runs `prog` on `packet`; returns what the kernel would: the number of bytes to keep
/// (0: drop). A load past the end of the packet ends the program with 0, as in the kernel;
/// an invalid program returns None (the kernel would refuse to attach it).
pub fn run(prog: &[Insn], packet: &[u8]) -> Option<u32> {
    let (mut a, mut x): (u32, u32) = (0, 0);
    let mut mem = [0u32; MEM_WORDS];
    let mut pc = 0usize;
    let load = |off: u32, size: u32| -> Option<u32> {
        let off = off as usize;
        let bytes = packet.get(off..off.checked_add(size as usize)?)?;
        Some(bytes.iter().fold(0u32, |acc, b| acc << 8 | u32::from(*b)))
    };
    for _ in 0..=MAX_INSNS {
        let i = *prog.get(pc)?;
        pc += 1;
        let size = match i.code & 0x18 {
            BPF_W => 4,
            BPF_H => 2,
            _ => 1,
        };
        match i.code & 0x07 {
            BPF_LD => {
                a = match i.code & 0xe0 {
                    BPF_IMM => i.k,
                    BPF_ABS => match load(i.k, size) {
                        Some(v) => v,
                        None => return Some(0),
                    },
                    BPF_IND => match load(x.wrapping_add(i.k), size) {
                        Some(v) => v,
                        None => return Some(0),
                    },
                    BPF_MEM => *mem.get(i.k as usize)?,
                    BPF_LEN => packet.len() as u32,
                    _ => return None,
                }
            }
            BPF_LDX => {
                x = match i.code & 0xe0 {
                    BPF_IMM => i.k,
                    BPF_MEM => *mem.get(i.k as usize)?,
                    BPF_LEN => packet.len() as u32,
                    _ => return None,
                }
            }
            BPF_ST => *mem.get_mut(i.k as usize)? = a,
            BPF_STX => *mem.get_mut(i.k as usize)? = x,
            BPF_ALU => {
                let v = if i.code & BPF_X != 0 { x } else { i.k };
                a = match i.code & 0xf0 {
                    0x00 => a.wrapping_add(v),
                    0x10 => a.wrapping_sub(v),
                    0x20 => a.wrapping_mul(v),
                    0x30 => {
                        if v == 0 {
                            return Some(0);
                        }
                        a / v
                    }
                    0x40 => a | v,
                    0x50 => a & v,
                    0x60 => a.wrapping_shl(v),
                    0x70 => a.wrapping_shr(v),
                    0x80 => a.wrapping_neg(),
                    0x90 => {
                        if v == 0 {
                            return Some(0);
                        }
                        a % v
                    }
                    0xa0 => a ^ v,
                    _ => return None,
                }
            }
            BPF_JMP => {
                let v = if i.code & BPF_X != 0 { x } else { i.k };
                let jump = match i.code & 0xf0 {
                    BPF_JA => {
                        pc += i.k as usize;
                        continue;
                    }
                    BPF_JEQ => a == v,
                    BPF_JGT => a > v,
                    BPF_JGE => a >= v,
                    BPF_JSET => a & v != 0,
                    _ => return None,
                };
                pc += usize::from(if jump { i.jt } else { i.jf });
            }
            BPF_RET => {
                return Some(match i.code & 0x18 {
                    BPF_A => a,
                    _ => i.k,
                })
            }
            BPF_MISC => {
                if i.code & 0xf8 == 0 {
                    x = a; // TAX
                } else {
                    a = x; // TXA
                }
            }
            _ => return None,
        }
    }
    None
}
