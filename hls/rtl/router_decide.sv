// router_decide: the integer hard-routing decision of host/router_rule.py, in RTL.
//
// Input: one frame = N signed accumulator values z_acc (the router projection MVAU's output
// W_int @ pooled_sum), folded into N/PE words of PE elements of ZW bits (element i of word f is
// z_acc[f*PE + i], at [i*ZW +: ZW]). The block computes, exactly and without sqrt or division,
//   z = z_acc + BIAS_INT
//   A = N*sum(u*z) - sum(u)*sum(z),  V = N*sum(z^2) - sum(z)^2,  R = V + E_INT   (R >= 0)
//   d = 1  iff  A + c*sqrt(R) > 0:
//     c >= 0: A > 0  or  (c > 0 and c^2*R > A^2)
//     c <  0: A > 0  and A^2 > c^2*R
// (router_rule.router_decision; a tie d == 0 goes to branch 0, like argmax).
// Output: one 1-word frame per input frame on out0_V (OUT_W bits, = IDX_BASE + d: feeds FINN+'s
// fetch_weights index port in_idx0_V), and level outputs `decision` (last d) and `decision_valid`
// (1 once a decision has been made; stays 1; readable through an AXI-lite register).
//
// Parameters (normally set by the wrapper that hls/router_params.py generates)
//   N          number of projection outputs       PE       elements per input word (N % PE == 0)
//   ZW         z_acc element width (signed)       BW       bias width (signed)
//   UW         u width (signed, 16)               CW       c width (signed)   EW  E width (unsigned)
//   BIAS_INT   N*BW bits, element j at [j*BW +: BW] (two's complement)
//   U_INT      N*UW bits, element j at [j*UW +: UW]
//   C_INT, E_INT, IDX_BASE (index of branch 0), OUT_W (16), IN_WORD_W (PE*ZW rounded up to 8)
// Ports: ap_clk, ap_rst_n (active-low sync), in0_V_tdata/tvalid/tready, out0_V_tdata/tvalid/tready,
//   decision, decision_valid.
// Protocol: AXI-stream, any valid/ready pattern. Sums accumulate while the frame streams in
//   (1 word/cycle); after the last word the input is held off (tready low) while the six
//   per-frame products are computed serially and until the decision word is accepted downstream.
// Latency: out0_V_tvalid rises 2*LN + SUW + SZW + AW + 2*CW + 15 cycles after the clock edge
//   that accepts the last input word (170 for N = 128, 16-bit z_acc, u and c); throughput one
//   frame per N/PE + that + 1 cycles (plus output back-pressure). The router runs once per image,
//   thousands of cycles apart.
// Arithmetic: per word, PE UW x ZBW-bit products (u*z) and PE squares (DSPs); per frame, six
//   products on one shift-and-add unit (WIDE-bit adder, no DSP). Exact at any width.
module router_decide #(
  parameter int unsigned N         = 4,
  parameter int unsigned PE        = 1,
  parameter int unsigned ZW        = 16,
  parameter int unsigned BW        = 16,
  parameter int unsigned UW        = 16,
  parameter int unsigned CW        = 16,
  parameter int unsigned EW        = 16,
  parameter logic [N*BW-1:0] BIAS_INT = '0,
  parameter logic [N*UW-1:0] U_INT    = '0,
  parameter logic [CW-1:0]   C_INT    = '0,
  parameter logic [EW-1:0]   E_INT    = '0,
  parameter int unsigned IDX_BASE  = 0,
  parameter int unsigned OUT_W     = 16,
  parameter int unsigned IN_WORD_W = ((PE*ZW + 7) / 8) * 8
)(
  input  logic                 ap_clk,
  input  logic                 ap_rst_n,
  input  logic [IN_WORD_W-1:0] in0_V_tdata,
  input  logic                 in0_V_tvalid,
  output logic                 in0_V_tready,
  output logic [OUT_W-1:0]     out0_V_tdata,
  output logic                 out0_V_tvalid,
  input  logic                 out0_V_tready,
  output logic                 decision,
  output logic                 decision_valid
);
  localparam int unsigned NF   = N / PE;
  localparam int unsigned FW   = (NF > 1) ? $clog2(NF) : 1;
  localparam int unsigned LN   = $clog2(N + 1) + 1;              // N fits signed in LN bits
  localparam int unsigned ZBW  = ((ZW > BW) ? ZW : BW) + 1;      // z = z_acc + bias
  localparam int unsigned SZW  = ZBW + LN;                       // sum z
  localparam int unsigned SUW  = UW + LN;                        // sum u
  localparam int unsigned SUZW = ZBW + UW + LN;                  // sum u*z
  localparam int unsigned SZZW = 2 * ZBW + LN;                   // sum z^2
  localparam int unsigned AW0  = SUZW + LN + 1;
  localparam int unsigned AW1  = SUW + SZW;
  localparam int unsigned AW   = ((AW0 > AW1) ? AW0 : AW1) + 2;
  localparam int unsigned VW0  = SZZW + LN + 1;
  localparam int unsigned VW   = ((VW0 > 2 * SZW) ? VW0 : 2 * SZW) + 2;
  localparam int unsigned RW   = ((VW > EW + 1) ? VW : EW + 1) + 1;
  localparam int unsigned WW0  = 2 * AW;
  localparam int unsigned WW1  = 2 * CW + RW;
  localparam int unsigned WIDE = ((WW0 > WW1) ? WW0 : WW1) + 2;  // every product fits

  initial begin
    if (N % PE != 0) $error("router_decide: N=%0d not divisible by PE=%0d", N, PE);
  end

  typedef enum logic [2:0] {S_ACC, S_LOAD, S_MUL, S_STORE, S_CMP, S_OUT} state_t;
  state_t state;
  logic [FW-1:0] fold;

  logic signed [SZW-1:0]  s_z;
  logic signed [SUW-1:0]  s_u;
  logic signed [SUZW-1:0] s_uz;
  logic signed [SZZW-1:0] s_zz;

  // this word's contribution
  logic signed [SZW-1:0]  w_z;
  logic signed [SUW-1:0]  w_u;
  logic signed [SUZW-1:0] w_uz;
  logic signed [SZZW-1:0] w_zz;
  always_comb begin
    w_z = '0; w_u = '0; w_uz = '0; w_zz = '0;
    for (int i = 0; i < PE; i++) begin
      logic signed [ZW-1:0]  za;
      logic signed [BW-1:0]  b;
      logic signed [UW-1:0]  u;
      logic signed [ZBW-1:0] z;
      logic signed [SUZW-1:0] uz;
      logic signed [SZZW-1:0] zz;
      za = $signed(in0_V_tdata[i*ZW +: ZW]);
      b  = $signed(BIAS_INT[(32'(fold) * PE + i) * BW +: BW]);
      u  = $signed(U_INT[(32'(fold) * PE + i) * UW +: UW]);
      z  = ZBW'(za) + ZBW'(b);          // sign-extended (signed operands, signed casts)
      uz = SUZW'(u) * SUZW'(z);
      zz = SZZW'(z) * SZZW'(z);
      w_z  = w_z + SZW'(z);
      w_u  = w_u + SUW'(u);
      w_uz = w_uz + uz;
      w_zz = w_zz + zz;
    end
  end

  // Per frame, six products, one at a time on one shift-and-add multiplier (no DSP): the frame
  // comes once per image, so ~170 cycles of latency cost nothing, while one-cycle WIDE-bit
  // products (the first version) took 25 DSP48E1 per router in Yosys xc7 (now 2: the per-word
  // u*z and z*z), for ~300 more LUTs and ~600 more FFs.
  //   0: t  = N * s_uz          1: a = t - s_u * s_z
  //   2: t  = N * s_zz          3: r = t - s_z * s_z + E
  //   4: a2 = a * a             5: cr = (c*c) * r
  // product(x, m) with m a B-bit two's-complement multiplier: sum over bits i < B-1 of m_i*x*2^i
  // minus m_(B-1)*x*2^(B-1), one bit per cycle (x shifts left, m right).
  localparam int unsigned CCW  = 2 * CW;                           // c*c >= 0 as a signed value
  localparam int unsigned B0   = LN + 1;                           // N, non-negative
  localparam int unsigned MB0  = (B0 > SUW) ? B0 : SUW;
  localparam int unsigned MB1  = (MB0 > SZW) ? MB0 : SZW;
  localparam int unsigned MB2  = (MB1 > AW) ? MB1 : AW;
  localparam int unsigned MB   = (MB2 > CCW) ? MB2 : CCW;          // widest multiplier
  localparam int unsigned CNTW = $clog2(MB + 1);
  localparam logic signed [CCW-1:0] CC = CCW'($signed(C_INT)) * CCW'($signed(C_INT));

  logic signed [WIDE-1:0] x_r, p_r, t_r, a_r, r_r, a2_r, cr_r;
  logic signed [MB-1:0]   m_r;
  logic [CNTW-1:0]        cnt;      // multiplier bits still to take
  logic [2:0]             step;
  logic                   d_r, dv_r;
  logic signed [WIDE-1:0] n_w, e_w;
  logic                   c_neg;
  assign n_w   = WIDE'(signed'({1'b0, 32'(N)}));
  assign e_w   = WIDE'(signed'({1'b0, E_INT}));
  assign c_neg = C_INT[CW-1];

  assign in0_V_tready = (state == S_ACC);
  wire take = in0_V_tvalid && in0_V_tready;

  always_ff @(posedge ap_clk) begin
    if (!ap_rst_n) begin
      state <= S_ACC;
      fold  <= '0;
      step  <= '0;
      s_z <= '0; s_u <= '0; s_uz <= '0; s_zz <= '0;
      d_r <= 1'b0; dv_r <= 1'b0;
    end else begin
      case (state)
        S_ACC: if (take) begin
          if (fold == '0) begin
            s_z <= w_z; s_u <= w_u; s_uz <= w_uz; s_zz <= w_zz;
          end else begin
            s_z <= s_z + w_z; s_u <= s_u + w_u; s_uz <= s_uz + w_uz; s_zz <= s_zz + w_zz;
          end
          if (fold == FW'(NF - 1)) begin
            fold  <= '0;
            step  <= '0;
            state <= S_LOAD;
          end else begin
            fold <= fold + 1'b1;
          end
        end
        S_LOAD: begin      // operands of product `step`
          p_r <= '0;
          case (step)
            3'd0:    begin x_r <= WIDE'(s_uz); m_r <= MB'(n_w);             cnt <= CNTW'(B0);  end
            3'd1:    begin x_r <= WIDE'(s_z);  m_r <= MB'(s_u);             cnt <= CNTW'(SUW); end
            3'd2:    begin x_r <= WIDE'(s_zz); m_r <= MB'(n_w);             cnt <= CNTW'(B0);  end
            3'd3:    begin x_r <= WIDE'(s_z);  m_r <= MB'(s_z);             cnt <= CNTW'(SZW); end
            3'd4:    begin x_r <= a_r;         m_r <= MB'(a_r);             cnt <= CNTW'(AW);  end
            default: begin x_r <= r_r;         m_r <= MB'(CC);              cnt <= CNTW'(CCW); end
          endcase
          state <= S_MUL;
        end
        S_MUL: begin       // one multiplier bit per cycle; the last (sign) bit subtracts
          if (m_r[0]) p_r <= (cnt == 1) ? p_r - x_r : p_r + x_r;
          x_r <= x_r <<< 1;
          m_r <= m_r >>> 1;
          cnt <= cnt - 1'b1;
          if (cnt == 1) state <= S_STORE;
        end
        S_STORE: begin
          case (step)
            3'd0, 3'd2: t_r  <= p_r;
            3'd1:       a_r  <= t_r - p_r;
            3'd3:       r_r  <= t_r - p_r + e_w;
            3'd4:       a2_r <= p_r;
            default:    cr_r <= p_r;
          endcase
          step  <= step + 1'b1;
          state <= (step == 3'd5) ? S_CMP : S_LOAD;
        end
        S_CMP: begin
          if (!c_neg)   // c >= 0
            d_r <= (a_r > 0) || ((C_INT != 0) && (cr_r > a2_r));
          else
            d_r <= (a_r > 0) && (a2_r > cr_r);
          dv_r  <= 1'b1;
          state <= S_OUT;
        end
        S_OUT: if (out0_V_tready) state <= S_ACC;
        default: state <= S_ACC;
      endcase
    end
  end

  assign out0_V_tvalid  = (state == S_OUT);
  assign out0_V_tdata   = OUT_W'(IDX_BASE) + OUT_W'(d_r);
  assign decision       = d_r;
  assign decision_valid = dv_r;
endmodule
