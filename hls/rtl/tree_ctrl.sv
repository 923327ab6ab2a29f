// tree_ctrl: the AXI4-Lite control block of the stitched tree (the on-chip subset of the host
// driver's register contract, host/backends/base.py REGISTERS; byte offsets below).
//
//   0x00 CTRL            W: bit0 start (ignored while running), bit1 soft reset (wins over start):
//                        aborts the inference, holds the datapath in reset until the next start.
//                        R: bit0 running, bit1 held in soft reset.
//   0x04 STATUS          R: bit0 done (the last output word left; cleared by start / soft reset),
//                        bit1 idle (not running), bit2 error (= bit3 | bit4),
//                        bit3 host fetch went wrong: a level's weight stream had another length
//                        than its region, or COMMIT_l named another branch than DECISION_l
//                        (cleared by start),
//                        bit4 a fetch read outside every level's regions (cleared by start).
//   0x08 SIGNATURE       R: layout signature the design was built for (parameter)
//   0x0C LEVELS          R: tree depth (parameter)
//   0x10 FETCH_MODE      RW: 1 on-chip (the router's decision drives the fetchers; reset value),
//                        0 host-driven (the PS DMAs the chosen region into the level's weight
//                        stream, hls/rtl/weight_stream_split.sv); change it between inferences
//   0x14 WEIGHT_BASE_LO  RW: weights.bin's address in DDR (drives the datapath's weights_base)
//   0x18 WEIGHT_BASE_HI  RW
//   0x1C DECISION_VALID  R: bit l: level l's decision was taken in this inference
//   0x20 + 4l DECISION_l R: level l's branch index (0 .. 2^(l+1)-1), latched when taken
//   0x40 + 4l COMMIT_l   RW: host mode: bit31 + branch, written once the level's region went out;
//                        a branch other than DECISION_l sets STATUS bit3
//   0x60 + 8l FETCH_ADDR_LO_l, 0x64 + 8l FETCH_ADDR_HI_l
//                        R: lowest address level l's fetchers read in this inference (0: none)
//   0xA0 + 4l FETCH_BYTES_l R: bytes level l's fetchers took in this inference: on chip R beats x
//                        beat size; host mode the matching weight-stream beats x 32 bytes
//   0xC0 + 4l FETCH_BRANCH_l RW: host mode: the branch whose region the host's next weight DMA of
//                        level l carries (written before the DMA starts; a region whose branch is not
//                        the decision is dropped, so a wrong prefetch never reaches the datapath)
//   0xE0 FRAMES          RW: images the next start takes (on-chip fetch; reset value 1, 0 counts as 1,
//                        host-driven fetch always 1). The images stream in back to back and pass
//                        through the tree level by level; done comes after the last one's output.
//   0xE4 FRAMES_DONE     R: images whose output left since the start
//   0xE8 PATH            R: the oldest unread image's path, popped by the read: bit31 valid, the last
//                        level's branch (the leaf) in the low bits; 0 when none is left. PATH_DEPTH
//                        images are kept (cleared by start); more unread sets STATUS bit5.
//   STATUS bit5          the path queue overflowed (also sets bit2)
//
// DECISION_l holds the last image's decision, FETCH_BYTES_l counts the whole run's bytes.
// A read burst belongs to level l when its address minus weights_base lies in
// [LEVEL_LO[l], LEVEL_HI[l]) (the level's branch regions in weights.bin). Bursts are tracked in
// order (a FIFO of RD_FIFO outstanding bursts; hls/rtl/axi_read_arbiter.sv has one in flight).
// LEVELS <= 8 (the offsets above leave 8 slots per array). Unmapped reads return 0.
module tree_ctrl #(
	int unsigned  LEVELS = 2,
	logic [31:0]  SIGNATURE = 32'h0,
	logic [64*LEVELS-1:0]  LEVEL_LO = '0,
	logic [64*LEVELS-1:0]  LEVEL_HI = '0,
	int unsigned  BRANCH_W = 8,
	int unsigned  ADDR_W = 8,
	int unsigned  RD_FIFO = 4,
	int unsigned  PATH_DEPTH = 64
)(
	input  logic  ap_clk,
	input  logic  ap_rst_n,

	// AXI4-Lite slave
	input  logic [ADDR_W-1:0]  s_axi_awaddr,
	input  logic               s_axi_awvalid,
	output logic               s_axi_awready,
	input  logic [31:0]        s_axi_wdata,
	input  logic [3:0]         s_axi_wstrb,
	input  logic               s_axi_wvalid,
	output logic               s_axi_wready,
	output logic [1:0]         s_axi_bresp,
	output logic               s_axi_bvalid,
	input  logic               s_axi_bready,
	input  logic [ADDR_W-1:0]  s_axi_araddr,
	input  logic               s_axi_arvalid,
	output logic               s_axi_arready,
	output logic [31:0]        s_axi_rdata,
	output logic [1:0]         s_axi_rresp,
	output logic               s_axi_rvalid,
	input  logic               s_axi_rready,

	// the datapath
	output logic         start,         // one cycle: an inference starts
	output logic         running,       // from start to the last output word
	output logic         soft_reset,    // from a soft reset until the next start
	output logic [63:0]  weights_base,
	input  logic [LEVELS*BRANCH_W-1:0]  level_branch,  // the tree top's branch register per level
	input  logic [LEVELS-1:0]           level_busy,    // rises when the level takes its decision
	input  logic         out_done,      // an image's last output word was taken
	output logic [31:0]  frames,        // images a start now takes (the wrapper samples it with start)
	input  logic         path_push,     // an image's first output word: its leaf is path_leaf
	input  logic [BRANCH_W-1:0]  path_leaf,

	// host-driven fetch (weight_stream_split per level)
	output logic         host_fetch,    // FETCH_MODE is 0
	output logic [LEVELS*BRANCH_W-1:0]  fetch_tag,      // FETCH_BRANCH_l
	input  logic [LEVELS*32-1:0]        host_fwd_beats, // matching weight-stream beats per level
	input  logic [LEVELS-1:0]           host_len_error, // a level's region had the wrong length

	// monitor of the fetchers' AXI4 read port
	input  logic [63:0]  mon_araddr,
	input  logic [2:0]   mon_arsize,
	input  logic         mon_arvalid,
	input  logic         mon_arready,
	input  logic         mon_rvalid,
	input  logic         mon_rready,
	input  logic         mon_rlast
);
	localparam int unsigned  LW = LEVELS > 1 ? $clog2(LEVELS + 1) : 1;   // level index, LEVELS = none
	localparam int unsigned  FW = RD_FIFO > 1 ? $clog2(RD_FIFO) : 1;

	// ------------------------------------------------------------------ registers
	logic [31:0]  WbLo, WbHi;
	logic         Done, OnChip, CommitErr, RangeErr;
	logic [LEVELS-1:0]  DecValid;
	logic [LEVELS-1:0]  Seen;   // level read at least one burst in this inference
	logic [BRANCH_W-1:0]  Decision [LEVELS];
	logic [31:0]  Commit [LEVELS];
	logic [BRANCH_W-1:0]  Tag [LEVELS];
	logic [63:0]  FetchAddr [LEVELS];
	logic [31:0]  FetchBytes [LEVELS];
	logic [LEVELS-1:0]  BusyQ;
	logic [31:0]  Frames, FramesRun, FramesDone;
	logic         PathOvf;
	// what a start takes (sampled with it, here and in the wrapper); FramesRun keeps it for the run
	wire [31:0]  frames_next = (!OnChip || Frames == 0) ? 32'd1 : Frames;
	assign frames = frames_next;
	assign weights_base = {WbHi, WbLo};
	assign host_fetch = !OnChip;
	for (genvar l = 0; l < LEVELS; l++) begin : genTag
		assign fetch_tag[BRANCH_W*l +: BRANCH_W] = Tag[l];
	end : genTag
	wire  host_err = CommitErr || (host_fetch && |host_len_error);

	// ------------------------------------------------------------------ path queue (images' leaves)
	localparam int unsigned  QW = PATH_DEPTH > 1 ? $clog2(PATH_DEPTH) : 1;
	logic [BRANCH_W-1:0]  PathQ [PATH_DEPTH];
	logic [QW-1:0]  PRd, PWr;
	logic [QW:0]    PCnt;
	wire  path_pop = s_axi_arvalid && s_axi_arready && {s_axi_araddr[ADDR_W-1:2], 2'b00} == ADDR_W'('hE8)
	                 && PCnt != 0;
	wire  path_in = path_push && running && PCnt != (QW+1)'(PATH_DEPTH);

	// ------------------------------------------------------------------ AXI4-Lite write
	logic               AwFull, WFull;
	logic [ADDR_W-1:0]  AwAddr;
	logic [31:0]        WData;
	logic [3:0]         WStrb;
	assign s_axi_awready = !AwFull && !s_axi_bvalid;
	assign s_axi_wready = !WFull && !s_axi_bvalid;
	assign s_axi_bresp = 2'b00;
	wire  wr_go = AwFull && WFull && !s_axi_bvalid;
	wire [ADDR_W-1:0]  wa = {AwAddr[ADDR_W-1:2], 2'b00};

	function automatic logic [31:0] merge(logic [31:0] old, logic [31:0] nw, logic [3:0] strb);
		for (int i = 0; i < 4; i++)  if (strb[i])  old[8*i +: 8] = nw[8*i +: 8];
		return old;
	endfunction

	wire  wr_ctrl = wr_go && wa == ADDR_W'('h00);
	wire  do_reset = wr_ctrl && WStrb[0] && WData[1];
	wire  do_start = wr_ctrl && WStrb[0] && WData[0] && !WData[1] && !running;
	assign start = do_start;

	// ------------------------------------------------------------------ fetch monitor
	// level of a burst address
	function automatic logic [LW-1:0] level_of(logic [63:0] addr, logic [63:0] base);
		automatic logic [63:0]  off = addr - base;
		for (int unsigned l = 0; l < LEVELS; l++) begin
			if (off >= LEVEL_LO[64*l +: 64] && off < LEVEL_HI[64*l +: 64])  return LW'(l);
		end
		return LW'(LEVELS);
	endfunction

	logic [LW+2:0]  Fifo [RD_FIFO];   // {level, arsize}
	logic [FW-1:0]  FRd, FWr;
	logic [FW:0]    FCnt;
	wire  ar_fire = mon_arvalid && mon_arready;
	wire  r_fire = mon_rvalid && mon_rready && FCnt != 0;
	wire [LW-1:0]  ar_level = level_of(mon_araddr, weights_base);
	wire [LW-1:0]  r_level = Fifo[FRd][LW+2:3];
	wire [2:0]     r_size = Fifo[FRd][2:0];

	always_ff @(posedge ap_clk) begin
		if (!ap_rst_n) begin
			AwFull <= 0;  WFull <= 0;  AwAddr <= '0;  WData <= '0;  WStrb <= '0;
			s_axi_bvalid <= 0;
			WbLo <= '0;  WbHi <= '0;
			running <= 0;  soft_reset <= 0;  Done <= 0;  OnChip <= 1;  CommitErr <= 0;  RangeErr <= 0;
			DecValid <= '0;  BusyQ <= '0;  Seen <= '0;
			for (int unsigned l = 0; l < LEVELS; l++) begin
				Decision[l] <= '0;  Commit[l] <= '0;  Tag[l] <= '0;  FetchAddr[l] <= '0;  FetchBytes[l] <= '0;
			end
			FRd <= '0;  FWr <= '0;  FCnt <= '0;
			Frames <= 32'd1;  FramesRun <= 32'd1;  FramesDone <= '0;  PathOvf <= 0;
			PRd <= '0;  PWr <= '0;  PCnt <= '0;
		end
		else begin
			// AXI-Lite write channel
			if (s_axi_awvalid && s_axi_awready) begin  AwFull <= 1;  AwAddr <= s_axi_awaddr;  end
			if (s_axi_wvalid && s_axi_wready) begin  WFull <= 1;  WData <= s_axi_wdata;  WStrb <= s_axi_wstrb;  end
			if (wr_go) begin  AwFull <= 0;  WFull <= 0;  s_axi_bvalid <= 1;  end
			if (s_axi_bvalid && s_axi_bready)  s_axi_bvalid <= 0;

			// decisions: latched when the level takes one
			BusyQ <= level_busy;
			for (int unsigned l = 0; l < LEVELS; l++) begin
				if (level_busy[l] && !BusyQ[l]) begin
					DecValid[l] <= 1;
					Decision[l] <= level_branch[BRANCH_W*l +: BRANCH_W];
				end
			end

			// fetch monitor: bursts in order, bytes per R beat
			if (ar_fire) begin
				Fifo[FWr] <= {ar_level, mon_arsize};
				FWr <= (FWr == FW'(RD_FIFO - 1)) ? '0 : FWr + 1;
				if (ar_level == LW'(LEVELS))  RangeErr <= 1;
				for (int unsigned l = 0; l < LEVELS; l++) begin
					if (ar_level == LW'(l)) begin
						Seen[l] <= 1;
						if (!Seen[l] || mon_araddr < FetchAddr[l])  FetchAddr[l] <= mon_araddr;
					end
				end
			end
			if (r_fire) begin
				for (int unsigned l = 0; l < LEVELS; l++)
					if (r_level == LW'(l))  FetchBytes[l] <= FetchBytes[l] + (32'd1 << r_size);
				if (mon_rlast)  FRd <= (FRd == FW'(RD_FIFO - 1)) ? '0 : FRd + 1;
			end
			FCnt <= FCnt + (FW+1)'(ar_fire) - (FW+1)'(r_fire && mon_rlast);

			if (out_done && running) begin
				FramesDone <= FramesDone + 1;
				if (FramesDone + 1 >= FramesRun) begin  running <= 0;  Done <= 1;  end
			end
			if (path_in) begin
				PathQ[PWr] <= path_leaf;
				PWr <= (PWr == QW'(PATH_DEPTH - 1)) ? '0 : PWr + 1;
			end
			if (path_push && running && !path_in)  PathOvf <= 1;
			if (path_pop)  PRd <= (PRd == QW'(PATH_DEPTH - 1)) ? '0 : PRd + 1;
			PCnt <= PCnt + (QW+1)'(path_in) - (QW+1)'(path_pop);

			// register writes
			if (wr_go) begin
				unique case (wa)
				ADDR_W'('h10):  if (WStrb[0])  OnChip <= WData[0];
				ADDR_W'('hE0):  Frames <= merge(Frames, WData, WStrb);
				ADDR_W'('h14):  WbLo <= merge(WbLo, WData, WStrb);
				ADDR_W'('h18):  WbHi <= merge(WbHi, WData, WStrb);
				default: begin
					for (int unsigned l = 0; l < LEVELS; l++) begin
						if (wa == ADDR_W'('h40 + 4*l)) begin
							Commit[l] <= merge(Commit[l], WData, WStrb);
							if (host_fetch && merge(Commit[l], WData, WStrb) != {1'b1, 31'(Decision[l])})
								CommitErr <= 1;
						end
						if (wa == ADDR_W'('hC0 + 4*l))  Tag[l] <= BRANCH_W'(merge(32'(Tag[l]), WData, WStrb));
					end
				end
				endcase
			end
			if (do_start || do_reset) begin
				Done <= 0;  RangeErr <= 0;  CommitErr <= 0;  DecValid <= '0;  Seen <= '0;
				FramesDone <= '0;  PathOvf <= 0;  PRd <= '0;  PWr <= '0;  PCnt <= '0;
				FramesRun <= frames_next;
				for (int unsigned l = 0; l < LEVELS; l++) begin  FetchAddr[l] <= '0;  FetchBytes[l] <= '0;  end
			end
			if (do_start) begin  running <= 1;  soft_reset <= 0;  end
			if (do_reset) begin
				running <= 0;  soft_reset <= 1;
				FRd <= '0;  FWr <= '0;  FCnt <= '0;
			end
		end
	end

	// ------------------------------------------------------------------ AXI4-Lite read
	function automatic logic [31:0] read_reg(logic [ADDR_W-1:0] a);
		automatic logic [31:0]  v = '0;
		unique case (a)
		ADDR_W'('h00):  v = {30'd0, soft_reset, running};
		ADDR_W'('h04):  v = {26'd0, PathOvf, RangeErr, host_err, host_err || RangeErr || PathOvf, !running, Done};
		ADDR_W'('h08):  v = SIGNATURE;
		ADDR_W'('h0C):  v = 32'(LEVELS);
		ADDR_W'('h10):  v = 32'(OnChip);
		ADDR_W'('h14):  v = WbLo;
		ADDR_W'('h18):  v = WbHi;
		ADDR_W'('h1C):  v = 32'(DecValid);
		ADDR_W'('hE0):  v = Frames;
		ADDR_W'('hE4):  v = FramesDone;
		ADDR_W'('hE8):  v = PCnt != 0 ? {1'b1, 31'(PathQ[PRd])} : 32'd0;
		default: begin
			for (int unsigned l = 0; l < LEVELS; l++) begin
				if (a == ADDR_W'('h20 + 4*l))  v = 32'(Decision[l]);
				if (a == ADDR_W'('h40 + 4*l))  v = Commit[l];
				if (a == ADDR_W'('h60 + 8*l))  v = FetchAddr[l][31:0];
				if (a == ADDR_W'('h64 + 8*l))  v = FetchAddr[l][63:32];
				if (a == ADDR_W'('hA0 + 4*l))  v = host_fetch ? host_fwd_beats[32*l +: 32] << 5 : FetchBytes[l];
				if (a == ADDR_W'('hC0 + 4*l))  v = 32'(Tag[l]);
			end
		end
		endcase
		return v;
	endfunction

	assign s_axi_arready = !s_axi_rvalid;
	assign s_axi_rresp = 2'b00;
	always_ff @(posedge ap_clk) begin
		if (!ap_rst_n) begin
			s_axi_rvalid <= 0;
			s_axi_rdata <= '0;
		end
		else begin
			if (s_axi_arvalid && s_axi_arready) begin
				s_axi_rvalid <= 1;
				s_axi_rdata <= read_reg({s_axi_araddr[ADDR_W-1:2], 2'b00});
			end
			else if (s_axi_rready)  s_axi_rvalid <= 0;
		end
	end

endmodule : tree_ctrl
