//! Device rules on cgroup v2, where the device controller is an eBPF program
//! (BPF_PROG_TYPE_CGROUP_DEVICE) attached to the cgroup: this module writes that program from
//! the spec's `linux.resources.devices` (pure, unit-tested with a small interpreter);
//! [`crate::linux::attach_device_program`] loads and attaches it.
//!
//! The rules keep the v1 meaning: in order, each later rule overriding earlier ones, and
//! everything allowed before the first. The program tries them from the last to the first: a
//! deny rule matches when it names any of the accesses asked for, an allow rule when it grants
//! them all; the first match decides; none matching allows.

use oci_spec::runtime::LinuxDeviceCgroup;

/// One eBPF instruction, as the kernel reads it (struct bpf_insn).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// dst in the low 4 bits, src in the high 4.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

// Opcodes (linux/bpf_common.h, linux/bpf.h).
const LDX_MEM_W: u8 = 0x61; // dst = *(u32 *)(src + off)
const ALU64_AND_K: u8 = 0x57; // dst &= imm
const ALU64_RSH_K: u8 = 0x77; // dst >>= imm
const ALU64_MOV_K: u8 = 0xb7; // dst = imm
const ALU64_MOV_X: u8 = 0xbf; // dst = src
const JMP_JNE_K: u8 = 0x55; // if dst != imm goto pc + off
const JMP_JEQ_K: u8 = 0x15; // if dst == imm goto pc + off
const EXIT: u8 = 0x95;

// struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }: access_type is
// (access << 16) | type.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// The devices every container may use whatever its rules say (as on v1): null, zero, full,
/// random, urandom, tty, console, ptmx, the pts devices, and mknod of any node.
pub fn default_rules() -> Vec<LinuxDeviceCgroup> {
    let rule = |typ: &str, major: Option<i64>, minor: Option<i64>, access: &str| {
        serde_json::from_value(serde_json::json!({
            "allow": true, "type": typ, "major": major, "minor": minor, "access": access
        }))
        .expect("a device rule")
    };
    vec![
        rule("c", Some(1), Some(3), "rwm"),
        rule("c", Some(1), Some(5), "rwm"),
        rule("c", Some(1), Some(7), "rwm"),
        rule("c", Some(1), Some(8), "rwm"),
        rule("c", Some(1), Some(9), "rwm"),
        rule("c", Some(5), Some(0), "rwm"),
        rule("c", Some(5), Some(1), "rwm"),
        rule("c", Some(5), Some(2), "rwm"),
        rule("c", Some(136), None, "rwm"),
        rule("c", None, None, "m"),
        rule("b", None, None, "m"),
    ]
}

fn access_bits(access: Option<&str>) -> i32 {
    let a = access.unwrap_or("rwm");
    let mut bits = 0;
    for (c, b) in [('r', ACC_READ), ('w', ACC_WRITE), ('m', ACC_MKNOD)] {
        if a.contains(c) {
            bits |= b;
        }
    }
    bits
}

/// The program for `rules` (the spec's, then [`default_rules`]).
pub fn program(rules: &[LinuxDeviceCgroup]) -> Vec<Insn> {
    // r2 = type, r3 = access, r4 = major, r5 = minor.
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU64_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 3, 1, 0, 0),
        insn(ALU64_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for rule in rules.iter().rev() {
        let mut checks: Vec<Insn> = Vec::new();
        // Each check jumps past the rest of this rule's block when it does not match; the
        // offsets are filled in once the block's length is known (off = i32::MIN marks them).
        let typ = rule.typ().map(|t| t.as_str().to_string());
        match typ.as_deref() {
            Some("c") => checks.push(insn(JMP_JNE_K, 2, 0, i16::MIN, DEV_CHAR)),
            Some("b") => checks.push(insn(JMP_JNE_K, 2, 0, i16::MIN, DEV_BLOCK)),
            _ => {}
        }
        if let Some(m) = rule.major().filter(|m| *m >= 0) {
            checks.push(insn(JMP_JNE_K, 4, 0, i16::MIN, m as i32));
        }
        if let Some(m) = rule.minor().filter(|m| *m >= 0) {
            checks.push(insn(JMP_JNE_K, 5, 0, i16::MIN, m as i32));
        }
        let acc = access_bits(rule.access().as_deref());
        if acc != ACC_READ | ACC_WRITE | ACC_MKNOD {
            checks.push(insn(ALU64_MOV_X, 6, 3, 0, 0));
            if rule.allow() {
                // Allow only if nothing asked for is outside the rule: (access & !acc) == 0.
                checks.push(insn(ALU64_AND_K, 6, 0, 0, !acc & 7));
                checks.push(insn(JMP_JNE_K, 6, 0, i16::MIN, 0));
            } else {
                // Deny if anything asked for is inside it: (access & acc) != 0.
                checks.push(insn(ALU64_AND_K, 6, 0, 0, acc));
                checks.push(insn(JMP_JEQ_K, 6, 0, i16::MIN, 0));
            }
        }
        checks.push(insn(ALU64_MOV_K, 0, 0, 0, i32::from(rule.allow())));
        checks.push(insn(EXIT, 0, 0, 0, 0));
        let len = checks.len();
        for (i, c) in checks.iter_mut().enumerate() {
            if c.off == i16::MIN {
                c.off = (len - i - 1) as i16;
            }
        }
        let unconditional = len == 2;
        p.extend(checks);
        if unconditional {
            // It matches every access: the earlier rules cannot be reached (and the verifier
            // refuses unreachable instructions).
            return p;
        }
    }
    p.push(insn(ALU64_MOV_K, 0, 0, 0, 1));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `p` for one device access, as the kernel would: returns r0.
    fn run(p: &[Insn], typ: i32, access: i32, major: u32, minor: u32) -> i64 {
        let ctx = [((access as u32) << 16) | typ as u32, major, minor];
        let mut r = [0i64; 11];
        let mut pc = 0usize;
        for _ in 0..10_000 {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(src, 1, "loads only from the context");
                    r[dst] = i64::from(ctx[(i.off / 4) as usize]);
                }
                ALU64_AND_K => r[dst] &= i64::from(i.imm),
                ALU64_RSH_K => r[dst] >>= i.imm,
                ALU64_MOV_K => r[dst] = i64::from(i.imm),
                ALU64_MOV_X => r[dst] = r[src],
                JMP_JNE_K if r[dst] != i64::from(i.imm) => pc += i.off as usize,
                JMP_JEQ_K if r[dst] == i64::from(i.imm) => pc += i.off as usize,
                JMP_JNE_K | JMP_JEQ_K => {}
                EXIT => return r[0],
                other => panic!("opcode {other:#x}"),
            }
        }
        panic!("no exit");
    }

    fn rules(v: serde_json::Value) -> Vec<LinuxDeviceCgroup> {
        let mut r: Vec<LinuxDeviceCgroup> = serde_json::from_value(v).expect("rules");
        r.extend(default_rules());
        r
    }

    const R: i32 = ACC_READ;
    const W: i32 = ACC_WRITE;
    const M: i32 = ACC_MKNOD;

    #[test]
    fn deny_all_then_allow_keeps_the_defaults_and_the_allowed() {
        // podman's and runc's shape: deny everything, allow a list.
        let p = program(&rules(serde_json::json!([
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 10, "minor": 200, "access": "rw"},
            {"allow": true, "type": "b", "major": 8, "access": "r"}
        ])));
        let c = DEV_CHAR;
        assert_eq!(run(&p, c, R | W, 1, 3), 1, "/dev/null");
        assert_eq!(run(&p, c, R | W, 136, 7), 1, "a pts");
        assert_eq!(run(&p, c, R | W, 10, 200), 1, "/dev/net/tun");
        assert_eq!(run(&p, c, M, 10, 200), 1, "mknod of anything");
        assert_eq!(run(&p, c, R, 4, 1), 0, "a tty not listed");
        assert_eq!(run(&p, DEV_BLOCK, R, 8, 0), 1, "block 8:* read");
        assert_eq!(run(&p, DEV_BLOCK, R | W, 8, 0), 0, "block 8:* write");
        assert_eq!(run(&p, DEV_BLOCK, R, 9, 0), 0);
    }

    #[test]
    fn a_later_deny_overrides_an_earlier_allow_for_the_accesses_it_names() {
        let p = program(&rules(serde_json::json!([
            {"allow": true, "access": "rwm"},
            {"allow": false, "type": "c", "major": 1, "minor": 3, "access": "w"}
        ])));
        assert_eq!(run(&p, DEV_CHAR, R, 1, 3), 1);
        assert_eq!(
            run(&p, DEV_CHAR, W, 1, 3),
            1,
            "the default rules come after"
        );
        let only: Vec<LinuxDeviceCgroup> = serde_json::from_value(serde_json::json!([
            {"allow": true, "access": "rwm"},
            {"allow": false, "type": "c", "major": 1, "minor": 3, "access": "w"}
        ]))
        .expect("rules");
        let p = program(&only);
        assert_eq!(run(&p, DEV_CHAR, R, 1, 3), 1);
        assert_eq!(run(&p, DEV_CHAR, W, 1, 3), 0);
        assert_eq!(run(&p, DEV_CHAR, R | W, 1, 3), 0);
        assert_eq!(run(&p, DEV_CHAR, W, 1, 5), 1);
    }

    #[test]
    fn no_rules_allow_everything_as_without_a_program() {
        let p = program(&[]);
        assert_eq!(run(&p, DEV_BLOCK, R | W | M, 8, 1), 1);
        assert_eq!(p.len(), 8);
        // A rule for everything ends the program (nothing after it could run).
        let all: Vec<LinuxDeviceCgroup> =
            serde_json::from_value(serde_json::json!([{"allow": false, "access": "rwm"}]))
                .expect("rules");
        let p = program(&all);
        assert_eq!(p.len(), 8);
        assert_eq!(run(&p, DEV_CHAR, R, 1, 3), 0);
    }
}
