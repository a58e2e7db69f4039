"""The eBPF assembler (golden bytes for every instruction form), the tracepoint
format parser, the program builders and the decoding of drained records.

Ground truth for the bytes: the instruction encoding of linux/bpf.h and
Documentation/bpf/standardization/instruction-set.rst (code, dst|src<<4,
little-endian s16 offset, s32 immediate).  Ground truth for the namespace
filter: the C it stands for,
``if (bpf_probe_read_kernel(&net, 8, sk + 48) || bpf_probe_read_kernel(&inum,
4, net + 136)) goto read_failed; if ((u32)inum != INODE) goto other_netns;``
with the offsets of the NetOffsets given, written out instruction by
instruction below.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from netatopd.ebpf import asm
from netatopd.ebpf.asm import AluOp, Helper, JmpOp, Label, Reg, Size
from netatopd.ebpf.btf import NetOffsets, SockOffsets
from netatopd.ebpf.helper import (
    EbpfUnavailable,
    FlowOwner,
    KernelOwnership,
    decode_flow,
    namespace_inode,
)
from netatopd.ebpf.programs import (
    COUNTERS,
    EVERY_NAMESPACE,
    FLOW_KEY,
    OWNER,
    Counter,
    FastPathFds,
    MapFds,
    OwnerKind,
    Slot,
    TracepointError,
    btf_length_context,
    length_program,
    parse_format,
    raw_length_context,
    state_program,
)


def one(item: asm.Item) -> str:
    return asm.assemble([item]).hex(" ")


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        # ALU64 / ALU, immediate and register sources
        (asm.mov64_imm(Reg.R1, 5), "b7 01 00 00 05 00 00 00"),
        (asm.mov64_reg(Reg.R6, Reg.R1), "bf 16 00 00 00 00 00 00"),
        (asm.alu64_imm(AluOp.ADD, Reg.R2, -40), "07 02 00 00 d8 ff ff ff"),
        (asm.alu64_reg(AluOp.ADD, Reg.R1, Reg.R2), "0f 21 00 00 00 00 00 00"),
        (asm.alu64_imm(AluOp.AND, Reg.R1, 2), "57 01 00 00 02 00 00 00"),
        (asm.alu32_imm(AluOp.AND, Reg.R1, 2), "54 01 00 00 02 00 00 00"),
        (asm.alu32_reg(AluOp.OR, Reg.R3, Reg.R4), "4c 43 00 00 00 00 00 00"),
        (asm.to_be(Reg.R1, 16), "dc 01 00 00 10 00 00 00"),
        # LDX of each size
        (asm.ldx(Size.W, Reg.R7, Reg.R6, 20), "61 67 14 00 00 00 00 00"),
        (asm.ldx(Size.H, Reg.R1, Reg.R6, 16), "69 61 10 00 00 00 00 00"),
        (asm.ldx(Size.B, Reg.R1, Reg.R6, 3), "71 61 03 00 00 00 00 00"),
        (asm.ldx(Size.DW, Reg.R8, Reg.R6, 8), "79 68 08 00 00 00 00 00"),
        # STX of each size, negative offsets from the frame pointer
        (asm.stx(Size.DW, Reg.FP, -8, Reg.R1), "7b 1a f8 ff 00 00 00 00"),
        (asm.stx(Size.W, Reg.FP, -104, Reg.R6), "63 6a 98 ff 00 00 00 00"),
        (asm.stx(Size.H, Reg.FP, -2, Reg.R1), "6b 1a fe ff 00 00 00 00"),
        (asm.stx(Size.B, Reg.FP, -4, Reg.R1), "73 1a fc ff 00 00 00 00"),
        # ST immediate
        (asm.st_imm(Size.W, Reg.FP, -104, 0), "62 0a 98 ff 00 00 00 00"),
        (asm.st_imm(Size.DW, Reg.FP, -96, 1), "7a 0a a0 ff 01 00 00 00"),
        (asm.st_imm(Size.H, Reg.FP, -2, 6), "6a 0a fe ff 06 00 00 00"),
        (asm.st_imm(Size.B, Reg.FP, -3, 2), "72 0a fd ff 02 00 00 00"),
        # atomic add
        (asm.atomic_add(Size.DW, Reg.R0, 8, Reg.R7), "db 70 08 00 00 00 00 00"),
        (asm.atomic_add(Size.W, Reg.R0, 0, Reg.R1), "c3 10 00 00 00 00 00 00"),
        # LD_IMM64: two slots; the map fd form has src = BPF_PSEUDO_MAP_FD
        (
            asm.ld_imm64(Reg.R1, 0x1122334455667788),
            "18 01 00 00 88 77 66 55 00 00 00 00 44 33 22 11",
        ),
        (asm.ld_map_fd(Reg.R1, 7), "18 11 00 00 07 00 00 00 00 00 00 00 00 00 00 00"),
        (asm.ld_imm64(Reg.R2, -1), "18 02 00 00 ff ff ff ff 00 00 00 00 ff ff ff ff"),
        # jumps with numeric offsets, call, exit
        (asm.ja(3), "05 00 03 00 00 00 00 00"),
        (asm.jmp_imm(JmpOp.JEQ, Reg.R0, 0, 2), "15 00 02 00 00 00 00 00"),
        (asm.jmp_imm(JmpOp.JNE, Reg.R1, 2, -1), "55 01 ff ff 02 00 00 00"),
        (asm.jmp_imm(JmpOp.JSET, Reg.R1, 2, 1), "45 01 01 00 02 00 00 00"),
        (asm.jmp_reg(JmpOp.JEQ, Reg.R1, Reg.R2, 4), "1d 21 04 00 00 00 00 00"),
        (asm.jmp32_imm(JmpOp.JSLT, Reg.R7, 0, 5), "c6 07 05 00 00 00 00 00"),
        # a 32-bit compare with an unsigned constant above 2**31 (an nsfs inode)
        (
            asm.jmp32_imm(JmpOp.JNE, Reg.R1, asm.imm32(0xEFFFFFF9), 3),
            "56 01 03 00 f9 ff ff ef",
        ),
        (asm.call(Helper.PROBE_READ_KERNEL), "85 00 00 00 71 00 00 00"),
        (asm.call(Helper.MAP_UPDATE_ELEM), "85 00 00 00 02 00 00 00"),
        (asm.exit_insn(), "95 00 00 00 00 00 00 00"),
    ],
)
def test_golden_bytes(item: asm.Item, expected: str) -> None:
    assert one(item) == expected


def test_forward_label_skips_the_instructions_between() -> None:
    code = asm.assemble(
        [
            asm.jmp_imm(JmpOp.JEQ, Reg.R1, 0, "end"),
            asm.mov64_imm(Reg.R0, 1),
            asm.ld_imm64(Reg.R2, 5),  # two slots
            Label("end"),
            asm.exit_insn(),
        ]
    )
    assert len(code) == 5 * 8
    assert struct.unpack_from("<h", code, 2)[0] == 3  # mov + 2 slots of ld_imm64


def test_backward_label() -> None:
    code = asm.assemble([Label("top"), asm.mov64_imm(Reg.R0, 0), asm.ja("top")])
    assert struct.unpack_from("<h", code, 8 + 2)[0] == -2


def test_jump_to_next_instruction_has_offset_zero() -> None:
    code = asm.assemble([asm.ja("next"), Label("next"), asm.exit_insn()])
    assert code[:8].hex(" ") == "05 00 00 00 00 00 00 00"


def test_undefined_and_duplicate_labels_are_refused() -> None:
    with pytest.raises(asm.AssemblerError, match="undefined"):
        asm.assemble([asm.ja("nowhere")])
    with pytest.raises(asm.AssemblerError, match="twice"):
        asm.assemble([Label("a"), Label("a"), asm.exit_insn()])


def test_bad_operands_are_refused() -> None:
    with pytest.raises(asm.AssemblerError):
        asm.to_be(Reg.R1, 8)
    with pytest.raises(asm.AssemblerError):
        asm.atomic_add(Size.H, Reg.R0, 0, Reg.R1)


def test_imm32_accepts_signed_and_unsigned_32_bit_values() -> None:
    assert asm.imm32(0xEFFFFFF9) == -0x10000007
    assert asm.imm32(-1) == -1 and asm.imm32(0x7FFFFFFF) == 0x7FFFFFFF
    with pytest.raises(asm.AssemblerError):
        asm.imm32(1 << 32)
    with pytest.raises(asm.AssemblerError):
        asm.imm32(-(1 << 31) - 1)


def test_instruction_count_counts_ld_imm64_twice() -> None:
    assert asm.instruction_count([asm.ld_map_fd(Reg.R1, 3), Label("x"), asm.exit_insn()]) == 3


# --- tracepoint formats --------------------------------------------------------

SEND_FORMAT = """name: sock_send_length
ID: 2284
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:void * sk;\toffset:8;\tsize:8;\tsigned:0;
\tfield:__u16 family;\toffset:16;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:18;\tsize:2;\tsigned:0;
\tfield:int ret;\toffset:20;\tsize:4;\tsigned:1;
\tfield:int flags;\toffset:24;\tsize:4;\tsigned:1;

print fmt: "sk address = %p", REC->sk
"""

STATE_FORMAT = """name: inet_sock_set_state
ID: 2287
format:
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;
"""

SOCK = SockOffsets(16, 14, 12, 4, 0, 72, 56, 532, False, 88)
FDS = MapFds(flows=3, connect=5, counters=6, seen=7, changes=8)
NET = NetOffsets(sk_net=48, net_ns_inum=136)
INODE = 0xEFFFFFF9  # 4026531833, the initial network namespace's usual inode


def test_parse_format_fields_and_id() -> None:
    fmt = parse_format("sock", "sock_send_length", SEND_FORMAT)
    assert fmt.id == 2284
    assert fmt.fields["sk"] == (8, 8, False)
    assert fmt.fields["ret"] == (20, 4, True)
    assert fmt.fields["common_pid"] == (4, 4, True)
    state = parse_format("sock", "inet_sock_set_state", STATE_FORMAT)
    assert state.fields["saddr_v6"] == (40, 16, False)  # array brackets stripped from the name


def test_parse_format_without_id_is_refused() -> None:
    with pytest.raises(TracepointError):
        parse_format("sock", "x", "format:\n")


def test_program_refuses_a_missing_or_resized_field() -> None:
    fmt = parse_format(
        "sock",
        "sock_send_length",
        SEND_FORMAT.replace(
            "size:4;\tsigned:1;\n\tfield:int flags", "size:8;\tsigned:1;\n\tfield:int flags"
        ),
    )
    with pytest.raises(TracepointError, match="ret is 8 bytes"):
        length_program(OwnerKind.SEND, fmt, SOCK, FDS, NET, INODE)
    fmt = parse_format("sock", "sock_send_length", SEND_FORMAT.replace("protocol", "other"))
    with pytest.raises(TracepointError, match="no field protocol"):
        length_program(OwnerKind.SEND, fmt, SOCK, FDS, NET, INODE)


def _instructions(code: bytes) -> list[tuple[int, int, int, int]]:
    return [asm.BPF_INSN.unpack_from(code, i) for i in range(0, len(code), 8)]


def test_length_program_uses_the_parsed_offsets_and_map_fds() -> None:
    fmt = parse_format("sock", "sock_send_length", SEND_FORMAT)
    code = asm.assemble(length_program(OwnerKind.SEND, fmt, SOCK, FDS, NET, INODE))
    insns = _instructions(code)
    # ret is loaded from record offset 20 into R7, sk from offset 8 into R8
    assert (0x61, 0x67, 20, 0) in insns
    assert (0x79, 0x68, 8, 0) in insns
    # map fds appear as BPF_PSEUDO_MAP_FD loads
    fds = {imm for code_, regs, _off, imm in insns if code_ == 0x18 and regs >> 4 == 1}
    assert fds == {3, 6, 7, 8}  # flows, counters, seen, changes (connect: the state program)
    # the kind stored in the owner record is SEND (st_imm W at value+32)
    assert (0x62, 0x0A, -88 + 32, OwnerKind.SEND) in insns
    # it ends with r0 = 0; exit
    assert insns[-2:] == [(0xB7, 0x00, 0, 0), (0x95, 0, 0, 0)]


def test_length_program_records_the_socket_cookie() -> None:
    """owner.cookie (value+40) = 0, then bpf_probe_read_kernel(8 bytes at sk + skc_cookie)."""
    fmt = parse_format("sock", "sock_send_length", SEND_FORMAT)
    insns = _instructions(asm.assemble(length_program(OwnerKind.SEND, fmt, SOCK, FDS, NET, INODE)))
    zero = insns.index((0x7A, 0x0A, -88 + 40, 0))  # *(u64 *)(fp - 48) = 0
    read = [
        (0xBF, 0xA1, 0, 0),  # r1 = fp
        (0x07, 0x01, 0, -88 + 40),  # r1 += -48 (owner.cookie)
        (0xB7, 0x02, 0, 8),  # r2 = 8
        (0xBF, 0x83, 0, 0),  # r3 = r8 (sk)
        (0x07, 0x03, 0, 88),  # r3 += 88 (skc_cookie)
        (0x85, 0x00, 0, 113),  # call bpf_probe_read_kernel
    ]
    start = insns.index(read[0], zero)
    assert insns[start : start + len(read)] == read
    # without a known offset the record carries 0 and nothing is read
    unknown = SOCK._replace(skc_cookie=-1)
    plain = _instructions(
        asm.assemble(length_program(OwnerKind.SEND, fmt, unknown, FDS, NET, INODE))
    )
    assert (0x07, 0x03, 0, 88) not in plain and len(plain) == len(insns) - len(read)
    # the state program's records carry 0
    state = parse_format("sock", "inet_sock_set_state", STATE_FORMAT)
    assert (0x7A, 0x0A, -88 + 40, 0) in _instructions(
        asm.assemble(state_program(state, FDS, NET, INODE))
    )


def test_every_namespace_programs_have_no_filter() -> None:
    """EVERY_NAMESPACE (the kernel counting path): no namespace reads, no OTHER_NETNS count,
    nothing unreachable left behind (the verifier refuses it)."""
    send = parse_format("sock", "sock_send_length", SEND_FORMAT)
    state = parse_format("sock", "inet_sock_set_state", STATE_FORMAT)
    for items in (
        length_program(OwnerKind.RECV, send, SOCK, FDS, NET, EVERY_NAMESPACE),
        state_program(state, FDS, NET, EVERY_NAMESPACE),
    ):
        insns = _instructions(asm.assemble(items))
        assert not any(insn[0] == 0x56 for insn in insns)  # no 32-bit inode compare
        assert (0x07, 0x03, 0, 48) not in insns  # skc_net.net is not read
        assert (0x7B, 0x19, Counter.OTHER_NETNS * 8, 0) not in insns
        assert_every_instruction_reachable(insns)


def test_every_namespace_send_asks_the_seen_map_by_cookie_first() -> None:
    """Before the tuple's reads: the cookie read (sk + 88), key.slot = COOKIE, and a
    lookup in the seen map (fd 7) that leaves at once when the thread was just reported."""
    send = parse_format("sock", "sock_send_length", SEND_FORMAT)
    insns = _instructions(
        asm.assemble(length_program(OwnerKind.SEND, send, SOCK, FDS, NET, EVERY_NAMESPACE))
    )
    cookie_read = insns.index((0x07, 0x03, 0, 88))
    slot = insns.index((0x72, 0x0A, -40 + 37, Slot.COOKIE))  # st_imm B key.slot
    seen_loads = [i for i, insn in enumerate(insns) if insn[0] == 0x18 and insn[3] == 7]
    first_tuple_read = insns.index((0x07, 0x03, 0, 4))  # skc_rcv_saddr
    assert cookie_read < slot < seen_loads[0] < first_tuple_read
    # per namespace: no early check, one seen lookup (and the update)
    plain = _instructions(asm.assemble(length_program(OwnerKind.SEND, send, SOCK, FDS, NET, INODE)))
    assert (0x72, 0x0A, -40 + 37, Slot.COOKIE) not in plain
    assert len([i for i in plain if i[0] == 0x18 and i[3] == 7]) == len(seen_loads) - 2


FAST = FastPathFds(storage=9, generation=10)


def test_every_namespace_send_with_the_fast_path_asks_the_socket_storage_first() -> None:
    """tp_btf on the kernel path: after the failed-call check, the generation (map fd
    10) and bpf_sk_storage_get(storage fd 9, sk, NULL, 0) come first, and a hit leaves
    before any read of the socket; the seen map is not asked by cookie; the storage
    is made (flags 1) only after the cookie read found one, before the tuple's reads.
    The cookie, protocol and family are direct loads from sk (r8), no helper call."""
    context = btf_length_context(SOCK)
    insns = _instructions(
        asm.assemble(length_program(OwnerKind.SEND, context, SOCK, FDS, NET, EVERY_NAMESPACE, FAST))
    )
    assert_every_instruction_reachable(insns)
    storage_gets = [
        i for i, insn in enumerate(insns) if insn[:2] == (0x85, 0x00) and insn[3] == 107
    ]
    assert len(storage_gets) == 2
    # r4 = flags just before each call: 0 (look), then 1 (BPF_SK_STORAGE_GET_F_CREATE)
    assert [insns[i - 1] for i in storage_gets] == [(0xB7, 0x04, 0, 0), (0xB7, 0x04, 0, 1)]
    # r2 = r8 (sk, unmoved) for both
    assert [insns[i - 3] for i in storage_gets] == [(0xBF, 0x82, 0, 0)] * 2
    # if (s32)r7 < 0 goto error_return (JMP32 JSLT, immediate 0)
    failed_call = next(i for i, insn in enumerate(insns) if insn[:2] == (0xC6, 0x07))
    generation_load = next(i for i, insn in enumerate(insns) if insn[0] == 0x18 and insn[3] == 10)
    cookie_read = insns.index((0x79, 0x81, 88, 0))  # r1 = *(u64 *)(r8 + 88)
    assert (0x69, 0x81, 532, 0) in insns  # r1 = *(u16 *)(r8 + 532): sk_protocol
    assert (0x69, 0x81, 16, 0) in insns  # r1 = *(u16 *)(r8 + 16): skc_family
    # the record's own cookie (bpf_probe_read_kernel into the owner) comes later only
    assert insns.index((0x07, 0x03, 0, 88)) > insns.index((0x07, 0x03, 0, 4))
    first_tuple_read = insns.index((0x07, 0x03, 0, 4))  # skc_rcv_saddr
    assert failed_call < generation_load < storage_gets[0] < cookie_read < storage_gets[1]
    assert storage_gets[1] < first_tuple_read
    assert (0x72, 0x0A, -40 + 37, Slot.COOKIE) not in insns  # no seen lookup by cookie
    # the fast path needs the cookie path: refused per namespace
    with pytest.raises(ValueError, match="every namespace"):
        length_program(OwnerKind.SEND, context, SOCK, FDS, NET, INODE, FAST)


def assert_every_instruction_reachable(insns: list[tuple[int, int, int, int]]) -> None:
    """What the verifier checks first ("unreachable insn"): a walk from 0 over jumps."""
    seen: set[int] = set()
    todo = [0]
    while todo:
        index = todo.pop()
        if index in seen or index >= len(insns):
            continue
        seen.add(index)
        code, _regs, offset, _imm = insns[index]
        if code == 0x18:  # ld_imm64: two slots
            seen.add(index + 1)
            todo.append(index + 2)
        elif code == 0x95:  # exit
            continue
        elif code == 0x05:  # goto
            todo.append(index + 1 + offset)
        elif code & 0x07 in (0x05, 0x06) and code != 0x85:  # conditional jumps (JMP, JMP32)
            todo += [index + 1, index + 1 + offset]
        else:
            todo.append(index + 1)
    assert seen == set(range(len(insns))), sorted(set(range(len(insns))) - seen)


def test_state_program_assembles_with_every_label_resolved() -> None:
    fmt = parse_format("sock", "inet_sock_set_state", STATE_FORMAT)
    items = state_program(fmt, FDS, NET, INODE)
    code = asm.assemble(items)
    assert len(code) == asm.instruction_count(items) * 8
    fds = {
        imm for code_, regs, _off, imm in _instructions(code) if code_ == 0x18 and regs >> 4 == 1
    }
    assert fds == {3, 5, 6, 8}  # flows, connect, counters, changes


# --- the network namespace filter ------------------------------------------------

# The check after ``R8 = sk`` (wildcard None: a jump offset, checked by following it).
NETNS_CHECK = [
    (0x15, 0x08, None, 0),  # if r8 == 0 goto out
    (0xBF, 0xA1, 0, 0),  # r1 = fp
    (0x07, 0x01, 0, -112),  # r1 += -112 (scratch)
    (0xB7, 0x02, 0, 8),  # r2 = 8
    (0xBF, 0x83, 0, 0),  # r3 = r8
    (0x07, 0x03, 0, 48),  # r3 += 48 (skc_net.net)
    (0x85, 0x00, 0, 113),  # call bpf_probe_read_kernel
    (0x55, 0x00, None, 0),  # if r0 != 0 goto read_failed
    (0x79, 0xA3, -112, 0),  # r3 = *(u64 *)(fp - 112), the struct net *
    (0x07, 0x03, 0, 136),  # r3 += 136 (ns.inum)
    (0xBF, 0xA1, 0, 0),  # r1 = fp
    (0x07, 0x01, 0, -112),  # r1 += -112
    (0xB7, 0x02, 0, 4),  # r2 = 4
    (0x85, 0x00, 0, 113),  # call bpf_probe_read_kernel
    (0x55, 0x00, None, 0),  # if r0 != 0 goto read_failed
    (0x61, 0xA1, -112, 0),  # r1 = *(u32 *)(fp - 112), the inode
    (0x56, 0x01, None, -0x10000007),  # if (u32)r1 != 0xeffffff9 goto other_netns
]
EXIT = [(0xB7, 0x00, 0, 0), (0x95, 0x00, 0, 0)]  # r0 = 0; exit


def _target(insns: list[tuple[int, int, int, int]], index: int) -> int:
    return index + 1 + insns[index][2]


def _counts_then_exits(insns: list[tuple[int, int, int, int]], start: int, counter: int) -> bool:
    """insns[start:] is counters[counter] += 1 (r9 = the counters) then a jump to r0 = 0; exit."""
    offset = counter * 8
    if insns[start : start + 3] != [
        (0x79, 0x91, offset, 0),  # r1 = *(u64 *)(r9 + offset)
        (0x07, 0x01, 0, 1),  # r1 += 1
        (0x7B, 0x19, offset, 0),  # *(u64 *)(r9 + offset) = r1
    ]:
        return False
    if insns[start + 3][0] != 0x05:  # goto out
        return False
    out = _target(insns, start + 3)
    return insns[out : out + 2] == EXIT


def _check_netns_filter(code: bytes, sk_field_offset: int, event: Counter) -> int:
    """Assert the filter's bytes and targets; the index of its last jump."""
    insns = _instructions(code)
    # the event is counted first, for every socket
    event_count = insns.index((0x7B, 0x19, event * 8, 0))
    # then r8 = sk from the tracepoint record (r6) and the check
    load_sk = insns.index((0x79, 0x68, sk_field_offset, 0))
    assert event_count < load_sk
    check = insns[load_sk + 1 : load_sk + 1 + len(NETNS_CHECK)]
    for got, want in zip(check, NETNS_CHECK, strict=True):
        assert got[:2] == want[:2] and got[3] == want[3], (got, want)
        if want[2] is not None:
            assert got[2] == want[2], (got, want)
    null = load_sk + 1
    assert insns[_target(insns, null) : _target(insns, null) + 2] == EXIT
    last = load_sk + len(NETNS_CHECK)
    assert _counts_then_exits(insns, _target(insns, last), Counter.OTHER_NETNS)
    for failed in (load_sk + 8, load_sk + 15):
        assert _counts_then_exits(insns, _target(insns, failed), Counter.READ_FAILED)
    # nothing but the counter lookup and the two reads runs before the check
    calls = [imm for code_, _regs, _off, imm in insns[:last] if code_ == 0x85]
    assert calls == [Helper.MAP_LOOKUP_ELEM, Helper.PROBE_READ_KERNEL, Helper.PROBE_READ_KERNEL]
    # and it happens once
    assert sum(1 for insn in insns if insn[0] == 0x56) == 1
    return last


def test_length_programs_leave_at_once_for_another_namespace() -> None:
    fmt = parse_format("sock", "sock_send_length", SEND_FORMAT)
    for kind, event in (
        (OwnerKind.SEND, Counter.SEND_EVENTS),
        (OwnerKind.RECV, Counter.RECV_EVENTS),
    ):
        code = asm.assemble(length_program(kind, fmt, SOCK, FDS, NET, INODE))
        last = _check_netns_filter(code, 8, event)
        # the failed-call check (ret, record offset 20) comes after the filter
        assert _instructions(code).index((0x61, 0x67, 20, 0)) == last + 1


# --- raw tracepoint programs (the context: u64 args[] = sk, ret, flags) ------------


def _context_loads(insns: list[tuple[int, int, int, int]]) -> set[tuple[int, int, int, int]]:
    """Every load through r6 (the program's context: record or arguments)."""
    return {
        insn for insn in insns if insn[0] in (0x61, 0x69, 0x71, 0x79) and insn[1] & 0xF0 == 0x60
    }


@pytest.mark.parametrize("netns_inode", [INODE, EVERY_NAMESPACE])
@pytest.mark.parametrize("kind", [OwnerKind.SEND, OwnerKind.RECV])
def test_raw_length_program_reads_sk_and_ret_from_the_arguments(
    kind: OwnerKind, netns_inode: int
) -> None:
    """sk = args[0] (u64 at 0) into r8, ret = low 32 bits of args[1] (offset 8) into r7;
    nothing else is read from the context; family and protocol are read from sk at
    skc_family (16) and sk_protocol (532), two bytes each; the same map fds, the same
    record and the same exits as the perf program."""
    raw = _instructions(
        asm.assemble(length_program(kind, raw_length_context(SOCK), SOCK, FDS, NET, netns_inode))
    )
    assert _context_loads(raw) == {(0x79, 0x68, 0, 0), (0x61, 0x67, 8, 0)}
    for offset in (SOCK.skc_family, SOCK.sk_protocol):
        start = raw.index((0x07, 0x03, 0, offset))  # r3 += offset (sk + member)
        assert raw[start - 4 : start + 2] == [
            (0xBF, 0xA1, 0, 0),  # r1 = fp
            (0x07, 0x01, 0, -112),  # r1 += scratch
            (0xB7, 0x02, 0, 2),  # r2 = 2
            (0xBF, 0x83, 0, 0),  # r3 = r8 (sk)
            (0x07, 0x03, 0, offset),
            (0x85, 0x00, 0, Helper.PROBE_READ_KERNEL),
        ]
        assert raw[start + 3] == (0x69, 0xA1, -112, 0)  # r1 = *(u16 *)(fp - 112)
    assert_every_instruction_reachable(raw)
    perf = _instructions(
        asm.assemble(
            length_program(
                kind,
                parse_format("sock", "sock_send_length", SEND_FORMAT),
                SOCK,
                FDS,
                NET,
                netns_inode,
            )
        )
    )
    map_fds = {imm for code_, regs, _off, imm in perf if code_ == 0x18 and regs >> 4 == 1}
    assert {imm for code_, regs, _off, imm in raw if code_ == 0x18 and regs >> 4 == 1} == map_fds
    # the perf program reads the family and protocol from the record instead
    assert (0x07, 0x03, 0, SOCK.sk_protocol) not in perf
    assert (0x69, 0x61, 18, 0) in perf and (0x69, 0x61, 16, 0) in perf
    # everything else is the same: two reads more (seven instructions each, with the
    # check of their result; the load of the scratch slot replaces the record's)
    assert len(raw) == len(perf) + 2 * 7
    stores = [insn for insn in raw if insn[0] in (0x62, 0x72, 0x6A, 0x7A)]
    assert stores == [insn for insn in perf if insn[0] in (0x62, 0x72, 0x6A, 0x7A)]


def test_raw_length_context_needs_a_whole_u16_protocol() -> None:
    with pytest.raises(ValueError, match="sk_protocol"):
        raw_length_context(SOCK._replace(sk_protocol_is_bitfield=True))
    with pytest.raises(ValueError):
        raw_length_context(SOCK._replace(skc_family=-1))


def test_raw_length_programs_leave_at_once_for_another_namespace() -> None:
    for kind, event in (
        (OwnerKind.SEND, Counter.SEND_EVENTS),
        (OwnerKind.RECV, Counter.RECV_EVENTS),
    ):
        code = asm.assemble(length_program(kind, raw_length_context(SOCK), SOCK, FDS, NET, INODE))
        last = _check_netns_filter(code, 0, event)
        assert _instructions(code).index((0x61, 0x67, 8, 0)) == last + 1


def test_state_program_leaves_at_once_for_another_namespace() -> None:
    fmt = parse_format("sock", "inet_sock_set_state", STATE_FORMAT)
    code = asm.assemble(state_program(fmt, FDS, NET, INODE))
    last = _check_netns_filter(code, 8, Counter.STATE_EVENTS)  # skaddr at 8
    # oldstate (record offset 16) and newstate (20) are loaded after it
    assert _instructions(code)[last + 1 : last + 3] == [(0x61, 0x67, 16, 0), (0x61, 0x68, 20, 0)]


def test_filter_compares_the_inode_it_was_built_for() -> None:
    fmt = parse_format("sock", "inet_sock_set_state", STATE_FORMAT)
    other = NetOffsets(sk_net=56, net_ns_inum=200)
    insns = _instructions(asm.assemble(state_program(fmt, FDS, other, 4026532313)))
    assert (0x07, 0x03, 0, 56) in insns and (0x07, 0x03, 0, 200) in insns
    assert [insn[3] for insn in insns if insn[0] == 0x56] == [4026532313 - (1 << 32)]
    for bad in (1 << 32, -5):  # 0 is EVERY_NAMESPACE
        with pytest.raises(ValueError, match="32-bit inode"):
            state_program(fmt, FDS, NET, bad)


def test_load_refuses_a_bad_inode_before_touching_the_kernel() -> None:
    with pytest.raises(ValueError, match="32-bit inode"):
        KernelOwnership.load(netns_inode=0)


def test_namespace_inode(tmp_path: Path) -> None:
    ns_file = tmp_path / "net"
    ns_file.write_bytes(b"")
    assert namespace_inode(ns_file) == ns_file.stat().st_ino
    assert namespace_inode() == Path("/proc/self/ns/net").stat().st_ino
    with pytest.raises(EbpfUnavailable, match="cannot find the network namespace"):
        namespace_inode(tmp_path / "missing")


# --- map layouts and decoding --------------------------------------------------


def test_layout_sizes() -> None:
    assert FLOW_KEY.size == 40
    assert OWNER.size == 48
    assert COUNTERS.size == 8 * len(Counter) == 8 * 15
    assert Counter.OTHER_NETNS == 11


def test_decode_ipv4_flow() -> None:
    key = FLOW_KEY.pack(
        bytes([192, 0, 2, 1]) + bytes(12), bytes([198, 51, 100, 7]) + bytes(12), 40000, 80, 2, 0, 6
    )
    value = OWNER.pack(123456789, 4242, 4200, b"curl\0" + bytes(11), OwnerKind.SEND, 0, 7001)
    assert decode_flow(key, value) == FlowOwner(
        6,
        b"\xc0\x00\x02\x01",
        40000,
        b"\xc6\x33\x64\x07",
        80,
        4200,
        4242,
        "curl",
        123456789,
        OwnerKind.SEND,
        False,
        7001,
    )


def test_decode_ipv4_mapped_ipv6_becomes_ipv4() -> None:
    mapped = bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 9])
    key = FLOW_KEY.pack(
        mapped, bytes(10) + b"\xff\xff" + bytes([198, 51, 100, 1]), 5000, 443, 10, 1, 6
    )
    value = OWNER.pack(1, 11, 10, b"a" * 16, OwnerKind.CONNECT, 1, 0)
    owner = decode_flow(key, value)
    assert (owner.local_addr, owner.remote_addr) == (
        bytes([192, 0, 2, 9]),
        bytes([198, 51, 100, 1]),
    )
    assert owner.comm == "a" * 16 and owner.closed is True and owner.kind is OwnerKind.CONNECT


def test_decode_ipv6_and_unconnected_udp() -> None:
    local = bytes.fromhex("20010db8000000000000000000000001")
    key = FLOW_KEY.pack(local, bytes(16), 53, 0, 10, 0, 17)
    value = OWNER.pack(5, 7, 7, b"dns\0" + bytes(12), OwnerKind.RECV, 0, 0)
    owner = decode_flow(key, value)
    assert owner.local_addr == local
    assert owner.remote_addr == b"" and owner.remote_port == 0
    assert (owner.protocol, owner.tgid, owner.tid) == (17, 7, 7)
