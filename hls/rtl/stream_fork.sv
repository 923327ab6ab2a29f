// stream_fork: duplicate one AXI-stream onto two outputs.
//
// Replaces FINN's DuplicateStreams (HLS only in FINN+) for the tree's fork after the backbone:
// one copy goes to the router, one to the feature buffer.
//
// Parameters
//   DATA_W   tdata width in bits (a FINN word: PE elements, padded to a multiple of 8)
// Ports (FINN naming)
//   ap_clk, ap_rst_n                          clock, active-low synchronous reset
//   in0_V_tdata/tvalid/tready                 input stream
//   out0_V_tdata/tvalid/tready                first copy
//   out1_V_tdata/tvalid/tready                second copy
// Protocol
//   AXI-stream valid/ready. A word is consumed from in0 once it can be placed in both output
//   registers, i.e. when each output register is empty or being drained in the same cycle.
//   Each output holds one registered word (valid and data are flops: no combinational path from
//   in0 to out*), so a stalled output blocks the input only once its register is full;
//   in0_V_tready depends combinationally on out*_V_tready (no loop: tready never feeds tvalid).
// Latency: 1 cycle; throughput 1 word per cycle when both outputs are ready.
module stream_fork #(
  parameter int unsigned DATA_W = 8
)(
  input  logic              ap_clk,
  input  logic              ap_rst_n,
  input  logic [DATA_W-1:0] in0_V_tdata,
  input  logic              in0_V_tvalid,
  output logic              in0_V_tready,
  output logic [DATA_W-1:0] out0_V_tdata,
  output logic              out0_V_tvalid,
  input  logic              out0_V_tready,
  output logic [DATA_W-1:0] out1_V_tdata,
  output logic              out1_V_tvalid,
  input  logic              out1_V_tready
);
  logic v0, v1;
  logic [DATA_W-1:0] d0, d1;
  wire free0 = !v0 || out0_V_tready;
  wire free1 = !v1 || out1_V_tready;
  assign in0_V_tready = free0 && free1;
  wire take = in0_V_tvalid && in0_V_tready;

  always_ff @(posedge ap_clk) begin
    if (!ap_rst_n) begin
      v0 <= 1'b0;
      v1 <= 1'b0;
    end else begin
      if (take) begin
        v0 <= 1'b1;
        v1 <= 1'b1;
      end else begin
        if (out0_V_tready) v0 <= 1'b0;
        if (out1_V_tready) v1 <= 1'b0;
      end
    end
  end
  always_ff @(posedge ap_clk) if (take) begin
    d0 <= in0_V_tdata;
    d1 <= in0_V_tdata;
  end

  assign out0_V_tdata  = d0;
  assign out0_V_tvalid = v0;
  assign out1_V_tdata  = d1;
  assign out1_V_tvalid = v1;
endmodule
