// global_sum_pool: per-channel sum over all pixels of a frame (FINN GlobalAccPool, in RTL), or
// with MAX = 1 the per-channel maximum (PointNet's max-pool over the points of a set abstraction).
//
// Input: one frame = N_PIXELS pixels in NHWC order, each pixel C/PE words, each word PE elements
// of IN_W bits packed little-endian (element i at [i*IN_W +: IN_W]), channel = fold*PE + i.
// Output: one frame = C/PE words, each PE sums of OUT_W = IN_W + clog2(N_PIXELS) bits, same packing
// (FINN's GlobalAccPool output type); with MAX = 1, PE maxima of OUT_W = IN_W bits. Padding bits of
// the output word are zero.
//
// Parameters
//   C         channels                         PE        elements per word (C % PE == 0)
//   N_PIXELS  pixels per frame (H*W)           IN_W      element width
//   SIGNED    1: elements are two's complement INT<IN_W>, sums (maxima) signed; 0: UINT
//   MAX       0: sum (default); 1: maximum
//   IN_WORD_W / OUT_WORD_W  stream word widths (default: PE*width rounded up to a multiple of 8)
// Ports: ap_clk, ap_rst_n (active-low sync), in0_V_tdata/tvalid/tready, out0_V_tdata/tvalid/tready.
// Protocol: AXI-stream, any valid/ready pattern. Partial sums live in a C/PE-entry memory; the
//   words of the last pixel go straight to a one-word output register, so the input is only
//   stalled while that register is full (throughput 1 word/cycle, no output phase).
// Latency: an output word appears 1 cycle after the matching word of the last pixel is accepted.
module global_sum_pool #(
  parameter int unsigned C          = 4,
  parameter int unsigned PE         = 1,
  parameter int unsigned N_PIXELS   = 4,
  parameter int unsigned IN_W       = 8,
  parameter bit          SIGNED     = 0,
  parameter bit          MAX        = 0,
  parameter int unsigned OUT_W      = IN_W + ((!MAX && N_PIXELS > 1) ? $clog2(N_PIXELS) : 0),
  parameter int unsigned IN_WORD_W  = ((PE*IN_W + 7) / 8) * 8,
  parameter int unsigned OUT_WORD_W = ((PE*OUT_W + 7) / 8) * 8
)(
  input  logic                  ap_clk,
  input  logic                  ap_rst_n,
  input  logic [IN_WORD_W-1:0]  in0_V_tdata,
  input  logic                  in0_V_tvalid,
  output logic                  in0_V_tready,
  output logic [OUT_WORD_W-1:0] out0_V_tdata,
  output logic                  out0_V_tvalid,
  input  logic                  out0_V_tready
);
  localparam int unsigned NF  = C / PE;
  localparam int unsigned FW  = (NF > 1) ? $clog2(NF) : 1;
  localparam int unsigned PXW = (N_PIXELS > 1) ? $clog2(N_PIXELS) : 1;

  initial begin
    if (C % PE != 0) $error("global_sum_pool: C=%0d not divisible by PE=%0d", C, PE);
  end

  logic [PE*OUT_W-1:0] acc [NF];
  logic [FW-1:0]  fold;
  logic [PXW-1:0] px;
  logic           ov;
  logic [PE*OUT_W-1:0] od;

  wire first_px = (px == '0);
  wire last_px  = (px == PXW'(N_PIXELS - 1));
  assign in0_V_tready = !last_px || !ov || out0_V_tready;
  wire take = in0_V_tvalid && in0_V_tready;

  // lane-wise sum (or maximum) of the running partial result and the new word
  logic [PE*OUT_W-1:0] sum;
  always_comb begin
    for (int i = 0; i < PE; i++) begin
      logic [OUT_W-1:0] x, a;
      logic             x_wins;
      if (SIGNED) x = OUT_W'($signed(in0_V_tdata[i*IN_W +: IN_W]));
      else        x = OUT_W'(in0_V_tdata[i*IN_W +: IN_W]);
      a = acc[fold][i*OUT_W +: OUT_W];
      x_wins = SIGNED ? ($signed(x) > $signed(a)) : (x > a);
      if (MAX) sum[i*OUT_W +: OUT_W] = (first_px || x_wins) ? x : a;
      else     sum[i*OUT_W +: OUT_W] = (first_px ? '0 : a) + x;
    end
  end

  always_ff @(posedge ap_clk) begin
    if (!ap_rst_n) begin
      fold <= '0;
      px   <= '0;
      ov   <= 1'b0;
    end else begin
      if (out0_V_tready) ov <= 1'b0;
      if (take) begin
        if (last_px) ov <= 1'b1;
        if (fold == FW'(NF - 1)) begin
          fold <= '0;
          px   <= last_px ? '0 : px + 1'b1;
        end else begin
          fold <= fold + 1'b1;
        end
      end
    end
  end

  always_ff @(posedge ap_clk) begin
    if (take) begin
      if (last_px) od <= sum;
      else         acc[fold] <= sum;
    end
  end

  assign out0_V_tdata  = OUT_WORD_W'(od);
  assign out0_V_tvalid = ov;
endmodule
