// trimflow's equivalent of FINN's ElementwiseAdd layer with two streamed inputs (finn-plus 1.6.1), for the
// simulation with Verilator.
//
// On a non-Versal part FINN implements ElementwiseAdd only in HLS (ElementwiseAdd_hls; its RTL variant needs DSP58),
// and turning that into RTL needs Vitis HLS, which this flow does not have. This module computes the same function
// as FINN's python model of the layer (ElementwiseBinaryOperation.execute_node: out = lhs + rhs, elementwise, as
// integers) for a residual join: both inputs streamed, same shape, the same PE on both inputs and the output.
// Each of the PE lanes of a beat is sign- or zero-extended to the output width and added; FINN derives the output
// type so that every sum fits (e.g. INT4 + INT4 -> INT5), so nothing wraps. Element i of a beat sits at bits
// [i*BITS +: BITS] on every stream, as FINN packs them; the bits above PE*BITS (FINN pads streams to whole bytes)
// are zero on the output. flow/sim/stitch.py puts it where the HW model has an ElementwiseAdd_hls node; the Vivado
// path (flow/finn/synth.py) still uses FINN's HLS layer.
//
// Timing: one output register; a beat pair is taken when both inputs are valid and the register is free or being
// read, so the layer sustains one beat per cycle (FINN's estimate: one cycle per folded output beat).
module trimflow_add_streams #(
	parameter int unsigned PE       = 1,
	parameter int unsigned A_BITS   = 4,
	parameter int unsigned B_BITS   = 4,
	parameter int unsigned O_BITS   = 5,
	parameter bit          A_SIGNED = 1,
	parameter bit          B_SIGNED = 1,
	parameter int unsigned A_WIDTH  = 8,  // padded stream widths
	parameter int unsigned B_WIDTH  = 8,
	parameter int unsigned O_WIDTH  = 8
)(
	input  logic               clk,
	input  logic               rst_n,
	input  logic [A_WIDTH-1:0] a_tdata,
	input  logic               a_tvalid,
	output logic               a_tready,
	input  logic [B_WIDTH-1:0] b_tdata,
	input  logic               b_tvalid,
	output logic               b_tready,
	output logic [O_WIDTH-1:0] m_tdata,
	output logic               m_tvalid,
	input  logic               m_tready
);
	// one bit more than the output: the extension below never truncates an input, whatever the widths
	localparam int unsigned EW = (O_BITS > A_BITS ? (O_BITS > B_BITS ? O_BITS : B_BITS)
	                                              : (A_BITS > B_BITS ? A_BITS : B_BITS)) + 1;

	logic [O_WIDTH-1:0] sum;
	always_comb begin
		sum = '0;
		for (int unsigned i = 0; i < PE; i++) begin
			automatic logic [A_BITS-1:0] a = a_tdata[i*A_BITS +: A_BITS];
			automatic logic [B_BITS-1:0] b = b_tdata[i*B_BITS +: B_BITS];
			automatic logic [EW-1:0] ea = {{(EW-A_BITS){A_SIGNED && a[A_BITS-1]}}, a};
			automatic logic [EW-1:0] eb = {{(EW-B_BITS){B_SIGNED && b[B_BITS-1]}}, b};
			automatic logic [EW-1:0] s = ea + eb;
			sum[i*O_BITS +: O_BITS] = s[O_BITS-1:0];
		end
	end

	wire take = a_tvalid && b_tvalid && (!m_tvalid || m_tready);
	assign a_tready = take;
	assign b_tready = take;

	always_ff @(posedge clk) begin
		if (!rst_n) begin
			m_tvalid <= 1'b0;
			m_tdata  <= '0;
		end else if (take) begin
			m_tvalid <= 1'b1;
			m_tdata  <= sum;
		end else if (m_tready) begin
			m_tvalid <= 1'b0;
		end
	end
endmodule : trimflow_add_streams
