// AXI-stream FIFO for simulation between dataflow layers.
//
// Stands in for FINN's StreamingFIFO (whose fifo.sv Verilator rejects). Behaviour that matters for cycle counts:
// holds up to DEPTH beats, first-word fall-through (a beat written in cycle t is visible at the output in t+1),
// full FIFOs still accept a beat in the cycle one leaves. `limit` (held constant during a run; 0 = DEPTH) caps the
// number of beats held below DEPTH, so that one simulator built with deep FIFOs can run both FIFO sizing (deep) and
// the sized design (trimflow.sim.fifo_sizing) without a second Verilator build.
module trimflow_axis_fifo #(
	parameter int unsigned WIDTH = 8,
	parameter int unsigned DEPTH = 2
)(
	input  logic              clk,
	input  logic              rst_n,
	input  logic [31:0]       limit,
	input  logic [WIDTH-1:0]  s_tdata,
	input  logic              s_tvalid,
	output logic              s_tready,
	output logic [WIDTH-1:0]  m_tdata,
	output logic              m_tvalid,
	input  logic              m_tready
);
	localparam int unsigned AW = DEPTH > 1 ? $clog2(DEPTH) : 1;

	logic [WIDTH-1:0]  mem[DEPTH];
	logic [AW-1:0]     rd_ptr, wr_ptr;
	logic [AW:0]       count;

	wire  do_read  = m_tvalid && m_tready;
	wire  do_write = s_tvalid && s_tready;

	assign m_tvalid = count != 0;
	assign m_tdata  = mem[rd_ptr];
	wire  [31:0] cap = (limit == 0 || limit > DEPTH) ? DEPTH : limit;
	assign s_tready = (32'(count) < cap) || m_tready;

	function automatic logic [AW-1:0] next(input logic [AW-1:0] p);
		return (p == AW'(DEPTH-1)) ? '0 : p + 1'b1;
	endfunction

	always_ff @(posedge clk) begin
		if (!rst_n) begin
			rd_ptr <= '0;
			wr_ptr <= '0;
			count  <= '0;
		end else begin
			if (do_write) begin
				mem[wr_ptr] <= s_tdata;
				wr_ptr <= next(wr_ptr);
			end
			if (do_read)  rd_ptr <= next(rd_ptr);
			count <= count + (AW+1)'(do_write) - (AW+1)'(do_read);
		end
	end
endmodule : trimflow_axis_fifo
