// axi_read_arbiter: N AXI4 read masters (FINN+ fetch_weights) onto one AXI4 read port (DDR).
//
// BUF_BEATS > 0 (the default): the port runs at its own rate, not at the fetchers'.
//   Each master has a FIFO of BUF_BEATS R beats. A master's AR is granted (round robin over the
//   masters with arvalid) only when its FIFO has room for the whole burst (beats reserved at the
//   grant, released as the master takes them), so the port never waits on a fetcher: every R beat
//   is taken the cycle it comes (m_rready = 1 while a burst is outstanding). Up to OUTSTANDING
//   bursts are in flight; they all carry ID 0 on the port, so the memory returns them in order
//   and a queue of grants routes each beat to its master. A fetcher fills its weight buffer one
//   SIMD word a cycle (local_weight_buffer), a few bytes a cycle, while the port moves 8-32 bytes a
//   cycle: with the FIFOs the level's fetchers fill side by side and the port serves the next
//   burst while the last one drains, instead of waiting for the slowest reader burst after burst.
//   Latency: an R beat is in the master's FIFO the cycle after the port delivers it.
// BUF_BEATS = 0: one burst at a time, the R channel of the granted master passed through (the
//   port held by its reader for the whole burst); OUTSTANDING is ignored. The earlier design, kept
//   as the baseline bench/fetch_rate.py measures against.
//
// PRIORITY = 1: master 0 first, then 1, ... (the stitched tree numbers its fetchers in datapath
//   order): a level's first layer gets its whole weight set first and starts computing while the
//   later layers' sets arrive, instead of every layer waiting until the level's last burst.
//
// The masters' arid is kept per master and returned on its rid. Write channels are not part of
// this block (the fetchers never write): the stitched top ties the DDR port's write channels off.
// Ports: packed arrays, master i at [i*W +: W].
module axi_read_arbiter #(
	int unsigned  N = 2,
	int unsigned  ADDR_W = 64,
	int unsigned  DATA_W = 256,
	int unsigned  ID_W = 2,
	int unsigned  BUF_BEATS = 32,     // per-master R FIFO; >= the longest burst (fetch_weights: 16)
	int unsigned  OUTSTANDING = 4,    // bursts in flight on the port (BUF_BEATS > 0)
	int unsigned  PRIORITY = 0        // 0: round robin; 1: the lowest-numbered eligible master first
)(
	input  logic  ap_clk,
	input  logic  ap_rst_n,

	// masters
	input  logic [N*ADDR_W-1:0]  s_araddr,
	input  logic [N*8-1:0]       s_arlen,
	input  logic [N*3-1:0]       s_arsize,
	input  logic [N*2-1:0]       s_arburst,
	input  logic [N*ID_W-1:0]    s_arid,
	input  logic [N-1:0]         s_arvalid,
	output logic [N-1:0]         s_arready,
	output logic [N*DATA_W-1:0]  s_rdata,
	output logic [N*2-1:0]       s_rresp,
	output logic [N-1:0]         s_rlast,
	output logic [N*ID_W-1:0]    s_rid,
	output logic [N-1:0]         s_rvalid,
	input  logic [N-1:0]         s_rready,

	// the DDR port
	output logic [ADDR_W-1:0]  m_araddr,
	output logic [7:0]         m_arlen,
	output logic [2:0]         m_arsize,
	output logic [1:0]         m_arburst,
	output logic [ID_W-1:0]    m_arid,
	output logic               m_arvalid,
	input  logic               m_arready,
	input  logic [DATA_W-1:0]  m_rdata,
	input  logic [1:0]         m_rresp,
	input  logic               m_rlast,
	input  logic [ID_W-1:0]    m_rid,
	input  logic               m_rvalid,
	output logic               m_rready
);
	localparam int unsigned  SEL_W = N > 1 ? $clog2(N) : 1;

	// next master with arvalid (and, buffered, room for its burst) after Last; with PRIORITY the
	// search always starts at master 0 (still work-conserving: a master without room is skipped)
	logic [SEL_W-1:0]  Last;
	logic [N-1:0]      eligible;
	logic              pick_vld;
	logic [SEL_W-1:0]  pick;
	wire  [SEL_W-1:0]  from = PRIORITY != 0 ? SEL_W'(N - 1) : Last;
	always_comb begin
		pick_vld = 0;
		pick = '0;
		for (int unsigned k = 1; k <= N; k++) begin
			automatic int unsigned  i = (int'(from) + k) % N;
			if (!pick_vld && eligible[i]) begin
				pick_vld = 1;
				pick = SEL_W'(i);
			end
		end
	end

	if (BUF_BEATS == 0) begin : genPass
		typedef enum logic [1:0] {ST_IDLE, ST_ADDR, ST_DATA} state_t;
		state_t  State;
		logic [SEL_W-1:0]  Sel;     // granted master
		assign eligible = s_arvalid;

		always_ff @(posedge ap_clk) begin
			if (!ap_rst_n) begin
				State <= ST_IDLE;
				Sel <= '0;
				Last <= SEL_W'(N - 1);
			end
			else begin
				case (State)
				ST_IDLE:
					if (pick_vld) begin
						Sel <= pick;
						Last <= pick;
						State <= ST_ADDR;
					end
				ST_ADDR:
					if (m_arready) State <= ST_DATA;
				ST_DATA:
					if (m_rvalid && m_rready && m_rlast) State <= ST_IDLE;
				default:
					State <= ST_IDLE;
				endcase
			end
		end

		// AR: the granted master's request, held by AXI rules (arvalid stays up until arready)
		assign	m_araddr  = s_araddr[Sel*ADDR_W +: ADDR_W];
		assign	m_arlen   = s_arlen[Sel*8 +: 8];
		assign	m_arsize  = s_arsize[Sel*3 +: 3];
		assign	m_arburst = s_arburst[Sel*2 +: 2];
		assign	m_arid    = s_arid[Sel*ID_W +: ID_W];
		assign	m_arvalid = (State == ST_ADDR);
		always_comb begin
			s_arready = '0;
			if (State == ST_ADDR) s_arready[Sel] = m_arready;
		end

		// R: to the granted master only
		assign	s_rdata = {N{m_rdata}};
		assign	s_rresp = {N{m_rresp}};
		assign	s_rlast = {N{m_rlast}};
		assign	s_rid   = {N{m_rid}};
		always_comb begin
			s_rvalid = '0;
			if (State == ST_DATA) s_rvalid[Sel] = m_rvalid;
		end
		assign	m_rready = (State == ST_DATA) && s_rready[Sel];
	end : genPass

	else begin : genBuf
		localparam int unsigned  CW = $clog2(BUF_BEATS + 1);
		localparam int unsigned  PW = BUF_BEATS > 1 ? $clog2(BUF_BEATS) : 1;
		localparam int unsigned  QW = OUTSTANDING > 1 ? $clog2(OUTSTANDING) : 1;
		localparam int unsigned  OW = $clog2(OUTSTANDING + 1);
		if (OUTSTANDING == 0) begin : g_bad
			$fatal(1, "axi_read_arbiter: OUTSTANDING must be >= 1");
		end

		// AR register: the granted request, held until the port takes it
		logic               ArVld;
		logic [SEL_W-1:0]   ArSel;
		logic [ADDR_W-1:0]  ArAddr;
		logic [7:0]         ArLen;
		logic [2:0]         ArSize;
		logic [1:0]         ArBurst;
		assign m_arvalid = ArVld;
		assign m_araddr = ArAddr;
		assign m_arlen = ArLen;
		assign m_arsize = ArSize;
		assign m_arburst = ArBurst;
		assign m_arid = '0;   // one ID on the port: the memory returns the bursts in order

		// grants in flight, in order: which master each outstanding burst's beats go to
		logic [SEL_W-1:0]  Order [OUTSTANDING];
		logic [QW-1:0]     ORd, OWr;
		logic [OW-1:0]     OCnt;
		wire  ar_fire = m_arvalid && m_arready;
		wire  r_fire = m_rvalid && m_rready;
		wire  r_end = r_fire && m_rlast;
		wire [SEL_W-1:0]  r_sel = Order[ORd];
		assign m_rready = OCnt != 0;   // room was reserved at the grant

		// per-master reservations (beats granted and not yet taken by the master) and FIFOs
		logic [CW-1:0]  Used [N];
		wire  grant = pick_vld && (!ArVld || m_arready) && (OCnt - OW'(r_end) + OW'(ArVld)) < OW'(OUTSTANDING);
		always_comb begin
			for (int unsigned i = 0; i < N; i++)
				eligible[i] = s_arvalid[i] && !(ArVld && ArSel == SEL_W'(i))   // one AR of a master at a time
				              && 32'(Used[i]) + 32'(s_arlen[i*8 +: 8]) + 1 <= BUF_BEATS;
			s_arready = '0;
			if (grant) s_arready[pick] = 1;   // the request is copied into the AR register
		end

		always_ff @(posedge ap_clk) begin
			if (!ap_rst_n) begin
				ArVld <= 0;  ArSel <= '0;  ArAddr <= '0;  ArLen <= '0;  ArSize <= '0;  ArBurst <= '0;
				Last <= SEL_W'(N - 1);
				ORd <= '0;  OWr <= '0;  OCnt <= '0;
			end
			else begin
				if (ar_fire)  ArVld <= 0;
				if (grant) begin
					ArVld <= 1;
					ArSel <= pick;
					Last <= pick;
					ArAddr <= s_araddr[pick*ADDR_W +: ADDR_W];
					ArLen <= s_arlen[pick*8 +: 8];
					ArSize <= s_arsize[pick*3 +: 3];
					ArBurst <= s_arburst[pick*2 +: 2];
				end
				if (ar_fire) begin
					Order[OWr] <= ArSel;
					OWr <= (OWr == QW'(OUTSTANDING - 1)) ? '0 : OWr + 1;
				end
				if (r_end)  ORd <= (ORd == QW'(OUTSTANDING - 1)) ? '0 : ORd + 1;
				OCnt <= OCnt + OW'(ar_fire) - OW'(r_end);
			end
		end

		for (genvar i = 0; i < N; i++) begin : genMaster
			logic [ID_W-1:0]  Id;   // the master's arid, returned on its rid
			(* ram_style = "distributed" *)
			logic [DATA_W+2:0]  Mem [BUF_BEATS];   // {rresp, rlast, rdata}
			logic [PW-1:0]  WPtr, RPtr;
			logic [CW-1:0]  Cnt;
			wire  push = r_fire && r_sel == SEL_W'(i);
			wire  pop = s_rvalid[i] && s_rready[i];
			wire  granted = grant && pick == SEL_W'(i);
			assign s_rvalid[i] = Cnt != 0;
			assign {s_rresp[2*i +: 2], s_rlast[i], s_rdata[i*DATA_W +: DATA_W]} = Mem[RPtr];
			assign s_rid[i*ID_W +: ID_W] = Id;
			always_ff @(posedge ap_clk) begin
				if (push)  Mem[WPtr] <= {m_rresp, m_rlast, m_rdata};
			end
			always_ff @(posedge ap_clk) begin
				if (!ap_rst_n) begin
					WPtr <= '0;  RPtr <= '0;  Cnt <= '0;  Used[i] <= '0;  Id <= '0;
				end
				else begin
					if (push)  WPtr <= (WPtr == PW'(BUF_BEATS - 1)) ? '0 : WPtr + 1;
					if (pop)   RPtr <= (RPtr == PW'(BUF_BEATS - 1)) ? '0 : RPtr + 1;
					Cnt <= Cnt + CW'(push) - CW'(pop);
					Used[i] <= Used[i] + (granted ? CW'(s_arlen[i*8 +: 8]) + CW'(1) : CW'(0)) - CW'(pop);
					if (granted)  Id <= s_arid[i*ID_W +: ID_W];
				end
			end
		end : genMaster
	end : genBuf

endmodule : axi_read_arbiter
