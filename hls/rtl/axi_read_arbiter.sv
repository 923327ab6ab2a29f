// axi_read_arbiter: N AXI4 read masters (FINN+ fetch_weights) onto one AXI4 read port (DDR).
//
// One burst at a time: a master's AR is granted (round robin over the masters with arvalid),
// forwarded, and every R beat goes back to that master until the beat with rlast; then the next
// AR may be granted. No ID remapping is needed (only one burst is in flight), so the masters'
// arid pass through unchanged. Write channels are not part of this block (the fetchers never
// write): the stitched top ties the DDR port's write channels off.
//
// Ports: packed arrays, master i at [i*W +: W]. Throughput: one burst per (arlen + 3) cycles at
// most; fetch_weights issues 16-beat bursts (512 bytes), so the arbiter costs ~2 cycles a burst.
module axi_read_arbiter #(
	int unsigned  N = 2,
	int unsigned  ADDR_W = 64,
	int unsigned  DATA_W = 256,
	int unsigned  ID_W = 2
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
	output logic [DATA_W-1:0]    s_rdata,     // shared, qualified by s_rvalid[i]
	output logic [1:0]           s_rresp,
	output logic                 s_rlast,
	output logic [ID_W-1:0]      s_rid,
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

	typedef enum logic [1:0] {ST_IDLE, ST_ADDR, ST_DATA} state_t;
	state_t  State;
	logic [SEL_W-1:0]  Sel;     // granted master
	logic [SEL_W-1:0]  Last;    // last granted (round robin)

	// next master with arvalid after Last
	logic              pick_vld;
	logic [SEL_W-1:0]  pick;
	always_comb begin
		pick_vld = 0;
		pick = '0;
		for (int unsigned k = 1; k <= N; k++) begin
			automatic int unsigned  i = (int'(Last) + k) % N;
			if (!pick_vld && s_arvalid[i]) begin
				pick_vld = 1;
				pick = SEL_W'(i);
			end
		end
	end

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
	assign	s_rdata = m_rdata;
	assign	s_rresp = m_rresp;
	assign	s_rlast = m_rlast;
	assign	s_rid   = m_rid;
	always_comb begin
		s_rvalid = '0;
		if (State == ST_DATA) s_rvalid[Sel] = m_rvalid;
	end
	assign	m_rready = (State == ST_DATA) && s_rready[Sel];

endmodule : axi_read_arbiter
