// trimflow's equivalent of FINN's DuplicateStreams layer (finn-plus 1.6.1), for the Verilator simulation.
//
// FINN implements DuplicateStreams only in HLS (DuplicateStreams_hls, finn-hlslib StreamingDup); turning that into
// RTL needs Vitis HLS, which this flow does not have. This module computes the same function as FINN's python model
// of the layer (every input beat appears unchanged on each of the N outputs) for any folding: a beat of the
// folded stream is PE elements wide whatever PE is, and the copy does not look inside it. flow/sim/stitch.py puts
// it where the HW model has a DuplicateStreams_hls node; the Vivado path (flow/finn/synth.py) still uses FINN's
// HLS layer.
//
// Timing: one beat per cycle, no latency (the outputs are the input, gated). An input beat is consumed once every
// output has taken it; outputs that took it early are masked until then, so no output sees a beat twice and a
// slow branch back-pressures the input rather than losing data, as the HLS layer's blocking writes do.
module trimflow_duplicate_streams #(
	parameter int unsigned WIDTH = 8,  // stream width in bits (FINN's padded width)
	parameter int unsigned N = 2       // number of output streams
)(
	input  logic                       clk,
	input  logic                       rst_n,
	input  logic [WIDTH-1:0]           s_tdata,
	input  logic                       s_tvalid,
	output logic                       s_tready,
	output logic [N-1:0][WIDTH-1:0]    m_tdata,
	output logic [N-1:0]               m_tvalid,
	input  logic [N-1:0]               m_tready
);
	logic [N-1:0] taken;  // outputs that already accepted the current input beat

	for (genvar i = 0; i < N; i++) begin : genOut
		assign m_tdata[i] = s_tdata;
	end
	// valid must not depend on ready (AXI-stream): it depends on the input and on past handshakes only
	assign m_tvalid = {N{s_tvalid}} & ~taken;
	assign s_tready = &(m_tready | taken);

	always_ff @(posedge clk) begin
		if (!rst_n)                    taken <= '0;
		else if (s_tvalid && s_tready) taken <= '0;
		else                           taken <= taken | (m_tvalid & m_tready);
	end
endmodule : trimflow_duplicate_streams
