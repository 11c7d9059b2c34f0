// trimflow's equivalent of FINN's Pool layer with Function "MaxPool" (finn-plus 1.6.1), for the Verilator
// simulation.
//
// FINN implements Pool only in HLS (Pool_hls, finn-hlslib Pool_batch); turning that into RTL needs Vitis HLS, which
// this flow does not have. This module computes the same function as FINN's python model of the layer
// (Pool.execute_node: the maximum over the K window elements of each channel, as integers) on the stream the layer
// actually receives: the depthwise sliding-window generator (ConvolutionInputGenerator, depthwise=1, SIMD = PE)
// emits, per output pixel and per group of PE channels, the K window positions as K consecutive beats of PE lanes.
// Every K beats become one output beat holding the PE lane-wise maxima. Max pooling needs no accumulator and FINN
// keeps the input type on the output (OutputDataType = InputDataType), so the lanes keep their BITS; signed lanes
// compare as two's complement. Element i of a beat sits at bits [i*BITS +: BITS], as FINN packs it; the bits above
// PE*BITS (FINN pads streams to whole bytes) are zero on the output. flow/sim/stitch.py puts it where the HW model
// has a Pool_hls node with Function MaxPool and refuses the other pooling functions; the Vivado path
// (flow/finn/synth.py) still uses FINN's HLS layer.
//
// Timing: one input beat per cycle, K cycles per output beat (FINN's estimate: Channels*K/PE per output pixel).
// The last beat of a window goes straight into the output register, so the input stalls only while that register
// still holds a beat the consumer has not taken.
module trimflow_max_pool #(
	parameter int unsigned PE      = 1,
	parameter int unsigned K       = 4,  // window elements per output element (KernelSize product)
	parameter int unsigned BITS    = 4,  // input and output element width
	parameter bit          SIGNED  = 0,
	parameter int unsigned I_WIDTH = 8,  // padded stream widths
	parameter int unsigned O_WIDTH = 8
)(
	input  logic               clk,
	input  logic               rst_n,
	input  logic [I_WIDTH-1:0] s_tdata,
	input  logic               s_tvalid,
	output logic               s_tready,
	output logic [O_WIDTH-1:0] m_tdata,
	output logic               m_tvalid,
	input  logic               m_tready
);
	localparam int unsigned CW = K > 1 ? $clog2(K) : 1;

	logic [CW-1:0]           pos;  // window element the next input beat holds
	logic [PE-1:0][BITS-1:0] best; // running maxima of the current window (positions 0 .. pos-1)
	logic [PE-1:0][BITS-1:0] upd;  // maxima including the beat on the input

	wire last = (pos == CW'(K - 1));
	always_comb begin
		for (int unsigned i = 0; i < PE; i++) begin
			automatic logic [BITS-1:0] x = s_tdata[i*BITS +: BITS];
			// offset binary: flipping the sign bit makes an unsigned compare order two's-complement values
			automatic logic [BITS-1:0] flip = SIGNED ? BITS'(1) << (BITS - 1) : '0;
			upd[i] = (pos == '0 || (x ^ flip) > (best[i] ^ flip)) ? x : best[i];
		end
	end

	assign s_tready = !last || !m_tvalid || m_tready;
	wire take = s_tvalid && s_tready;

	always_ff @(posedge clk) begin
		if (!rst_n) begin
			pos      <= '0;
			best     <= '0;
			m_tvalid <= 1'b0;
			m_tdata  <= '0;
		end else begin
			if (m_tready) m_tvalid <= 1'b0;
			if (take) begin
				best <= upd;
				pos  <= last ? '0 : pos + 1'b1;
				if (last) begin
					m_tvalid <= 1'b1;
					m_tdata  <= O_WIDTH'(upd);
				end
			end
		end
	end
endmodule : trimflow_max_pool
