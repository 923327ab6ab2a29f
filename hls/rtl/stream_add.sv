// stream_add: elementwise sum of two integer AXI-streams (the residual join of a ResNet block).
//
// Replaces FINN+'s ElementwiseAdd of two streams (HLS only on non-Versal parts: the RTL variant
// needs DSP58; FINN+ 1.6.1 has no AddStreams any more): lane i of the output word is
// A_i + B_i, each operand sign-extended (A_SIGNED/B_SIGNED = 1) or zero-extended to OUT_W bits,
// the sum truncated to OUT_W bits; signed output iff A_SIGNED || B_SIGNED.
//
// OUT_W vs FINN+: the caller passes FINN+'s out_dtype bitwidth (ElementwiseAdd._derive_out_dtype:
//   max(A_W,B_W)+1, +1 more when the wider operand is unsigned and the narrower signed). The default
//   here, max(A_W,B_W)+1 (+1 if the signedness differs), is never narrower; it is one bit wider when
//   the signed operand is the strictly wider one. FINN+ picks max+1 for INT<n> + UINT<n> (equal
//   widths, signed first), one bit short: INT4+UINT4 reaches 22, beyond INT5. Elaboration warns
//   whenever OUT_W is below NEED_W, the exact width of the sum's range (the sum then wraps).
//
// Parameters
//   PE          elements per word (lanes)
//   A_W, B_W    element widths of in0 (A) and in1 (B)
//   A_SIGNED, B_SIGNED   1: two's complement INT<W>; 0: UINT<W>
//   OUT_W       output element width (default above)
//   A_WORD_W / B_WORD_W / OUT_WORD_W  stream word widths (default: PE*width rounded up to a
//               multiple of 8); output padding bits are 0, input padding bits are ignored
// Ports (FINN naming)
//   ap_clk, ap_rst_n                 clock, active-low synchronous reset
//   in0_V_tdata/tvalid/tready        operand A (element i at [i*A_W +: A_W])
//   in1_V_tdata/tvalid/tready        operand B (element i at [i*B_W +: B_W])
//   out0_V_tdata/tvalid/tready       sums (element i at [i*OUT_W +: OUT_W])
// Protocol
//   AXI-stream valid/ready. A pair of words (one from each input) is consumed together, only when
//   both inputs are valid and the output register is empty or drained in the same cycle:
//     in0_V_tready = in1_V_tvalid && free,  in1_V_tready = in0_V_tvalid && free,
//     free = !out0_V_tvalid || out0_V_tready.
//   Neither input's tready depends on its own tvalid; each depends combinationally on the other
//   input's tvalid and on out0_V_tready. No loop unless something upstream makes one input's tvalid
//   depend combinationally on the other input's tready: stream_fork's outputs and FINN's FIFOs are
//   registers, so a residual block's fork -> two paths -> add has none. An input that
//   arrives early waits, valid and held, until the other one comes: no deadlock here, but the add
//   consumes no word of one path ahead of the other, so the faster path (the skip connection) needs
//   a FIFO deep enough to cover the slower one's latency, or the fork before them stalls.
//   The output is one registered word (tvalid and tdata are flops: no combinational path from
//   in0/in1 to out0).
// Latency: 1 cycle; throughput 1 word per cycle when both inputs are valid and out0 is ready.
module stream_add #(
  parameter int unsigned PE         = 1,
  parameter int unsigned A_W        = 8,
  parameter int unsigned B_W        = 8,
  parameter bit          A_SIGNED   = 0,
  parameter bit          B_SIGNED   = 0,
  parameter int unsigned OUT_W      = ((A_W > B_W) ? A_W : B_W) + 1 + ((A_SIGNED != B_SIGNED) ? 1 : 0),
  parameter int unsigned A_WORD_W   = ((PE*A_W + 7) / 8) * 8,
  parameter int unsigned B_WORD_W   = ((PE*B_W + 7) / 8) * 8,
  parameter int unsigned OUT_WORD_W = ((PE*OUT_W + 7) / 8) * 8
)(
  input  logic                  ap_clk,
  input  logic                  ap_rst_n,
  input  logic [A_WORD_W-1:0]   in0_V_tdata,
  input  logic                  in0_V_tvalid,
  output logic                  in0_V_tready,
  input  logic [B_WORD_W-1:0]   in1_V_tdata,
  input  logic                  in1_V_tvalid,
  output logic                  in1_V_tready,
  output logic [OUT_WORD_W-1:0] out0_V_tdata,
  output logic                  out0_V_tvalid,
  input  logic                  out0_V_tready
);
  // Exact width of the sum's range: same signedness max+1; mixed, an unsigned U bits and a signed
  // S bits: U+2 if U >= S (U+1 for INT1), else S+1.
  localparam int unsigned U_W    = A_SIGNED ? B_W : A_W;
  localparam int unsigned S_W    = A_SIGNED ? A_W : B_W;
  localparam int unsigned NEED_W = (A_SIGNED == B_SIGNED) ? ((A_W > B_W) ? A_W : B_W) + 1
                                 : (U_W >= S_W) ? U_W + ((S_W > 1) ? 2 : 1) : S_W + 1;

  initial begin
    if (A_WORD_W < PE*A_W || B_WORD_W < PE*B_W || OUT_WORD_W < PE*OUT_W)
      $error("stream_add: a word width is below PE*element width");
    if (OUT_W < NEED_W)
      $warning("stream_add: OUT_W=%0d < %0d, the width of A + B (A_W=%0d A_SIGNED=%0d B_W=%0d B_SIGNED=%0d): sums wrap",
               OUT_W, NEED_W, A_W, A_SIGNED, B_W, B_SIGNED);
  end

  logic                ov;
  logic [PE*OUT_W-1:0] od;

  wire free = !ov || out0_V_tready;
  assign in0_V_tready = in1_V_tvalid && free;
  assign in1_V_tready = in0_V_tvalid && free;
  wire take = in0_V_tvalid && in1_V_tvalid && free;

  // lane-wise A + B, each extended to OUT_W
  logic [PE*OUT_W-1:0] sum;
  always_comb begin
    for (int i = 0; i < PE; i++) begin
      logic [OUT_W-1:0] a, b;
      if (A_SIGNED) a = OUT_W'($signed(in0_V_tdata[i*A_W +: A_W]));
      else          a = OUT_W'(in0_V_tdata[i*A_W +: A_W]);
      if (B_SIGNED) b = OUT_W'($signed(in1_V_tdata[i*B_W +: B_W]));
      else          b = OUT_W'(in1_V_tdata[i*B_W +: B_W]);
      sum[i*OUT_W +: OUT_W] = a + b;
    end
  end

  always_ff @(posedge ap_clk) begin
    if (!ap_rst_n)          ov <= 1'b0;
    else if (take)          ov <= 1'b1;
    else if (out0_V_tready) ov <= 1'b0;
  end
  always_ff @(posedge ap_clk) if (take) od <= sum;

  assign out0_V_tdata  = OUT_WORD_W'(od);
  assign out0_V_tvalid = ov;
endmodule
