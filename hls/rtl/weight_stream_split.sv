// weight_stream_split: one host DMA stream of a branch's weight region -> the level's N fetchers.
//
// Host-driven weight mode: the PS reads the router's decision and starts ONE AXI-DMA MM2S transfer
// of the chosen branch's whole contiguous region (DATA_W-bit beats, TLAST on the last). This block
// hands beat i of the region to fetcher k where BEAT_LO[k] <= i < BEAT_HI[k] (each external_mem
// MVAU's fetch_weights buffer); beats in no range are padding (alignment gaps): consumed, dropped.
//
// `tag` names the branch whose region the DMA carries. The host may write it and start the DMA
// before the router has decided (prefetch). With speculate = 0 the stream is held until
// decision_valid; then a transfer whose tag is the decision is forwarded, any other is drained
// (dropped) so the DMA completes and the host can send the right one. A host that aborts a wrong
// DMA mid-way (no TLAST) re-tags for the decision: the next beat then starts a forwarded region.
// After one region is delivered (`filled`) the stream is held again until `clear`, so the next
// inference's prefetch cannot overwrite buffers still in use.
//
// Speculative fill (speculate = 1): a transfer that starts before the decision is forwarded at once
// (the fetchers' buffers fill while the previous level still computes; the level's datapath only
// starts after the decision, so nothing consumes them yet) and its tag remembered. When the
// decision comes and differs, `flush` resets the level's fetchers for FLUSH_CYCLES cycles (no beat
// moves meanwhile), the beats forwarded so far count as dropped, filled and len_error return to 0,
// and the rest of the wrong transfer, if still running, is drained as above.
//
// Parameters
//   N                 fetchers of the level
//   DATA_W            beat width (fetch_weights' 256-bit words)
//   BRANCH_W          width of tag / decision
//   REGION_BEATS      beats of one region; a matching transfer of another length sets len_error
//   FLUSH_CYCLES      length of the flush pulse after a wrong guess (>= 1)
//   BEAT_LO, BEAT_HI  fetcher k's beats [BEAT_LO[32*k +: 32], BEAT_HI[32*k +: 32]), in any order,
//                     non-overlapping, within the region
// Protocol
//   A demultiplexer: m_tdata = s_axis_tdata, m_tvalid[k] = s_axis_tvalid for the beat's fetcher
//   only, s_axis_tready = that fetcher's m_tready (1 for padding and dropped beats, 0 while held,
//   in the cycle a wrong guess is found and while flush is high).
//   No register on the path (0 cycles latency, 1 beat/cycle); m_tready never feeds m_tvalid.
module weight_stream_split #(
  int unsigned N = 2,
  int unsigned DATA_W = 256,
  int unsigned BRANCH_W = 8,
  int unsigned REGION_BEATS = 4,
  logic [32*N-1:0] BEAT_LO = '0,
  logic [32*N-1:0] BEAT_HI = '0,
  int unsigned FLUSH_CYCLES = 4
)(
  input  logic                ap_clk,
  input  logic                ap_rst_n,
  input  logic                clear,
  input  logic [DATA_W-1:0]   s_axis_tdata,
  input  logic                s_axis_tvalid,
  output logic                s_axis_tready,
  input  logic                s_axis_tlast,
  input  logic [BRANCH_W-1:0] tag,
  input  logic                decision_valid,
  input  logic [BRANCH_W-1:0] decision,
  input  logic                speculate,
  output logic [DATA_W-1:0]   m_tdata,
  output logic [N-1:0]        m_tvalid,
  input  logic [N-1:0]        m_tready,
  output logic                flush,
  output logic [31:0]         fwd_beats,
  output logic [31:0]         drop_beats,
  output logic                filled,
  output logic                len_error
);
  // Bad ranges would give a fetcher the wrong words silently: refuse them at elaboration.
  if (REGION_BEATS == 0) begin : g_bad_region
    $fatal(1, "weight_stream_split: REGION_BEATS must be >= 1");
  end
  if (FLUSH_CYCLES == 0) begin : g_bad_flush
    $fatal(1, "weight_stream_split: FLUSH_CYCLES must be >= 1");
  end
  for (genvar k = 0; k < N; k++) begin : g_check
    if (BEAT_LO[32*k +: 32] > BEAT_HI[32*k +: 32] || BEAT_HI[32*k +: 32] > REGION_BEATS) begin : g_bad
      $fatal(1, "weight_stream_split: fetcher %0d range [%0d, %0d) not within [0, %0d)", k,
             BEAT_LO[32*k +: 32], BEAT_HI[32*k +: 32], REGION_BEATS);
    end
    // Any order (a residual level's shortcut conv lies first in the region but is instanced last),
    // but no beat may belong to two fetchers: `sel` is one-hot.
    for (genvar j = 0; j < k; j++) begin : g_disjoint
      if (BEAT_LO[32*j +: 32] < BEAT_HI[32*j +: 32] && BEAT_LO[32*k +: 32] < BEAT_HI[32*k +: 32]
          && BEAT_LO[32*j +: 32] < BEAT_HI[32*k +: 32] && BEAT_LO[32*k +: 32] < BEAT_HI[32*j +: 32]) begin : g_bad
        $fatal(1, "weight_stream_split: fetcher %0d range overlaps fetcher %0d's", k, j);
      end
    end
  end

  // IDLE: the next beat is a transfer's first; FWD: inside a forwarded region; DROP: draining.
  typedef enum logic [1:0] {IDLE, FWD, DROP} mode_t;
  mode_t       mode;
  logic [31:0] idx;            // region beat index of the next beat (valid in FWD)
  logic        spec;           // the region in flight or delivered was started before the decision
  logic [BRANCH_W-1:0] spec_tag;  // its tag (valid while spec)
  localparam int unsigned FW = $clog2(FLUSH_CYCLES + 1);
  logic [FW-1:0] flush_left;   // cycles of flush still to come

  assign flush = flush_left != '0;
  wire match = tag == decision;
  // The decision has come, and the region forwarded before it is another branch's.
  wire wrong = decision_valid && spec && spec_tag != decision;
  // Before the decision only a speculative region moves: a transfer's first beat, or the rest of it.
  wire guess = !decision_valid && speculate && (mode == IDLE || spec);
  // Held while undecided (unless guessing), after a delivered region, while a wrong guess is undone
  // and in the clear cycle (no beat is lost to it).
  wire active = (decision_valid && !wrong || guess) && !filled && !flush && !clear;
  // In IDLE or DROP the beat opens a transfer, forwarded if the tag is the decision (in DROP:
  // the host re-tagged after aborting the wrong DMA) or as a guess. Inside a region the tag no
  // longer matters.
  wire fwd  = active && (mode == FWD || match || guess);
  wire drop = active && !fwd;
  wire [31:0] i = (mode == FWD) ? idx : 32'd0;

  logic [N-1:0] sel;           // the fetcher(s) of beat i: one-hot, or none for padding
  // (a range starting at beat 0, or an empty one, makes a compare constant: that is intended)
  /* verilator lint_off UNSIGNED */
  for (genvar k = 0; k < N; k++) begin : g_sel
    assign sel[k] = i >= BEAT_LO[32*k +: 32] && i < BEAT_HI[32*k +: 32];
  end
  /* verilator lint_on UNSIGNED */

  assign m_tdata       = s_axis_tdata;
  assign m_tvalid      = (fwd && s_axis_tvalid) ? sel : '0;
  assign s_axis_tready = drop || (fwd && (sel == '0 || (sel & m_tready) != '0));
  wire take     = s_axis_tvalid && s_axis_tready;
  wire end_beat = i == REGION_BEATS - 1;    // the region's last beat, TLAST or not

  always_ff @(posedge ap_clk) begin
    if (!ap_rst_n || clear) begin
      mode       <= IDLE;
      idx        <= '0;
      filled     <= 1'b0;
      len_error  <= 1'b0;
      fwd_beats  <= '0;
      drop_beats <= '0;
      spec       <= 1'b0;
      spec_tag   <= '0;
      flush_left <= '0;
    end else begin
      if (flush) flush_left <= flush_left - FW'(1);
      if (decision_valid) spec <= 1'b0;       // the guess is resolved (right: it simply is the region)
      if (wrong) begin
        // Undo the wrong guess: the fetchers drop their words, the beats count as dropped, and the
        // rest of the transfer (if still running) is drained; a re-tag then forwards from beat 0.
        flush_left <= FW'(FLUSH_CYCLES);
        fwd_beats  <= '0;
        drop_beats <= drop_beats + fwd_beats;
        filled     <= 1'b0;
        len_error  <= 1'b0;
        if (mode == FWD) mode <= DROP;
      end else if (take && fwd) begin
        if (guess && mode == IDLE) begin
          spec     <= 1'b1;
          spec_tag <= tag;
        end
        fwd_beats <= fwd_beats + 32'd1;
        if (s_axis_tlast || end_beat) begin
          // A short transfer or a missing TLAST both end the region here; the fetchers' buffers
          // are then incomplete or the DMA's length is wrong: the host must see it.
          filled <= 1'b1;
          mode   <= IDLE;
          if (s_axis_tlast != end_beat) len_error <= 1'b1;
        end else begin
          mode <= FWD;
          idx  <= i + 32'd1;
        end
      end else if (take) begin
        drop_beats <= drop_beats + 32'd1;
        mode       <= s_axis_tlast ? IDLE : DROP;
      end
    end
  end
endmodule
