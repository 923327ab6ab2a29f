// stream_maxpool: K x K max pool, stride K, over an NHWC stream (FINN StreamingMaxPool, in RTL).
//
// Input: frames of IFM_DIM x IFM_DIM pixels (row-major), C channels folded into C/PE words of PE
// elements of W bits (element i at [i*W +: W], channel = fold*PE + i).
// Output: frames of OFM_DIM x OFM_DIM pixels, OFM_DIM = IFM_DIM / K (floor, like FINN: trailing rows
// and columns that do not fill a window are consumed and dropped), same word format.
//
// Parameters
//   IFM_DIM  input height = width        K       window = stride (default 2)
//   C, PE    channels, elements per word W       element width
//   SIGNED   0: UINT elements (FINN's case), 1: INT elements
//   WORD_W   stream word width (default PE*W rounded up to a multiple of 8; padding bits output 0)
// Ports: ap_clk, ap_rst_n (active-low sync), in0_V_tdata/tvalid/tready, out0_V_tdata/tvalid/tready.
// Protocol: AXI-stream, any valid/ready pattern. One line buffer of OFM_DIM*C/PE words holds the
//   running maxima of the current output row; the word completing a window goes to a one-word
//   output register, so the input only stalls while that register is full (1 word/cycle).
// Latency: 1 cycle after the last input word of a window.
module stream_maxpool #(
  parameter int unsigned IFM_DIM = 4,
  parameter int unsigned K       = 2,
  parameter int unsigned C       = 4,
  parameter int unsigned PE      = 1,
  parameter int unsigned W       = 8,
  parameter bit          SIGNED  = 0,
  parameter int unsigned WORD_W  = ((PE*W + 7) / 8) * 8
)(
  input  logic              ap_clk,
  input  logic              ap_rst_n,
  input  logic [WORD_W-1:0] in0_V_tdata,
  input  logic              in0_V_tvalid,
  output logic              in0_V_tready,
  output logic [WORD_W-1:0] out0_V_tdata,
  output logic              out0_V_tvalid,
  input  logic              out0_V_tready
);
  localparam int unsigned NF      = C / PE;
  localparam int unsigned OFM_DIM = IFM_DIM / K;
  localparam int unsigned FW  = (NF > 1) ? $clog2(NF) : 1;
  localparam int unsigned DW  = $clog2(IFM_DIM + 1);
  localparam int unsigned KW  = (K > 1) ? $clog2(K) : 1;
  localparam int unsigned OW  = (OFM_DIM > 1) ? $clog2(OFM_DIM) : 1;

  initial begin
    if (C % PE != 0) $error("stream_maxpool: C=%0d not divisible by PE=%0d", C, PE);
    if (OFM_DIM < 1) $error("stream_maxpool: IFM_DIM=%0d < K=%0d", IFM_DIM, K);
  end

  logic [PE*W-1:0] buf_mem [OFM_DIM * NF];
  logic [FW-1:0] fold;
  logic [DW-1:0] col, row;      // input pixel position
  logic [KW-1:0] kc, kr;        // position inside the window
  logic [OW-1:0] oc;            // output column of the current window
  logic ov;
  logic [PE*W-1:0] od;

  wire in_window = (col < DW'(OFM_DIM * K)) && (row < DW'(OFM_DIM * K));
  wire first = (kc == '0) && (kr == '0);
  wire last  = (kc == KW'(K - 1)) && (kr == KW'(K - 1));
  wire emit  = in_window && last;
  assign in0_V_tready = !emit || !ov || out0_V_tready;
  wire take = in0_V_tvalid && in0_V_tready;

  localparam int unsigned ABITS = (OFM_DIM * NF > 1) ? $clog2(OFM_DIM * NF) : 1;
  wire [ABITS-1:0] addr = ABITS'(32'(oc) * NF + 32'(fold));  // out of range only in dropped columns (not written)
  logic [PE*W-1:0] mx;
  always_comb begin
    for (int i = 0; i < PE; i++) begin
      logic [W-1:0] x, b;
      logic gt;
      x = in0_V_tdata[i*W +: W];
      b = buf_mem[addr][i*W +: W];
      gt = SIGNED ? ($signed(x) > $signed(b)) : (x > b);
      mx[i*W +: W] = (first || gt) ? x : b;
    end
  end

  always_ff @(posedge ap_clk) begin
    if (!ap_rst_n) begin
      fold <= '0; col <= '0; row <= '0; kc <= '0; kr <= '0; oc <= '0;
      ov <= 1'b0;
    end else begin
      if (out0_V_tready) ov <= 1'b0;
      if (take) begin
        if (emit) ov <= 1'b1;
        if (fold == FW'(NF - 1)) begin
          fold <= '0;
          // next pixel
          if (col == DW'(IFM_DIM - 1)) begin
            col <= '0;
            kc  <= '0;
            oc  <= '0;
            if (row == DW'(IFM_DIM - 1)) begin
              row <= '0;
              kr  <= '0;
            end else begin
              row <= row + 1'b1;
              kr  <= (kr == KW'(K - 1)) ? '0 : kr + 1'b1;
            end
          end else begin
            col <= col + 1'b1;
            if (kc == KW'(K - 1)) begin
              kc <= '0;
              oc <= oc + 1'b1;
            end else begin
              kc <= kc + 1'b1;
            end
          end
        end else begin
          fold <= fold + 1'b1;
        end
      end
    end
  end

  always_ff @(posedge ap_clk) begin
    if (take && in_window) begin
      if (last) od <= mx;
      else      buf_mem[addr] <= mx;
    end
  end

  assign out0_V_tdata  = WORD_W'(od);
  assign out0_V_tvalid = ov;
endmodule
