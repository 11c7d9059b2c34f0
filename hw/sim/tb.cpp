// AXI-stream testbench for the stitched FINN dataflow pipeline (Verilator model `Vtrimflow_sim_top`).
//
// Usage: sim <input.bin> <n_in_beats> <in_beats_per_image> <out_beats_per_image> <n_images>
//            <max_cycles> <stall_cycles> <output.bin> <result.json> [<fifo_limits.bin|-> [<pace>]]
// Input/output files hold one beat per record of IN_WORDS/OUT_WORDS little-endian uint32 words (element 0 of a beat
// in the lowest bits, as FINN packs streams). The source is always valid and the sink always ready, so the measured
// cycles are the pipeline's own throughput. result.json reports cycles, per-image timestamps and, per link, the
// number of beats, the cycles it was back-pressured and its handshake state at the end (Python uses those to name
// a stalled layer).
// FIFO sizing (trimflow.sim.fifo_sizing): fifo_limits.bin holds one uint32 per FIFO (0 = its built depth) that caps
// its fill level; with pace > 0, input beat i enters no earlier than cycle i * pace / in_per_img (the source
// delivers pace cycles per image, evenly, instead of running ahead of the design). result.json reports each FIFO's peak fill level, counted from the
// beats on the links into and out of it (FIFO_IN / FIFO_OUT in sim_params.h).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "Vtrimflow_sim_top.h"
#include "sim_params.h"
#include "verilated.h"

namespace {

// Verilator maps a port of W bits to uint8/16/32 (W<=32), uint64 (W<=64) or VlWide<(W+31)/32>.
template <typename T>
void set_port(T& port, const uint32_t* w, int n) {
	uint64_t v = w[0];
	if (n > 1) v |= uint64_t(w[1]) << 32;
	port = static_cast<T>(v);
}
template <std::size_t N>
void set_port(VlWide<N>& port, const uint32_t* w, int n) {
	for (std::size_t i = 0; i < N; ++i) port[i] = i < std::size_t(n) ? w[i] : 0;
}
template <typename T>
void get_port(const T& port, uint32_t* w, int n) {
	uint64_t v = port;
	w[0] = uint32_t(v);
	if (n > 1) w[1] = uint32_t(v >> 32);
}
template <std::size_t N>
void get_port(const VlWide<N>& port, uint32_t* w, int n) {
	for (int i = 0; i < n; ++i) w[i] = port[i];
}
inline bool bit(const uint32_t* w, int i) { return (w[i / 32] >> (i % 32)) & 1u; }

}  // namespace

int main(int argc, char** argv) {
	if (argc < 10 || argc > 12) {
		std::fprintf(stderr, "usage: %s in.bin n_in_beats in_per_img out_per_img n_images max_cycles "
		                     "stall_cycles out.bin result.json [fifo_limits.bin|- [pace]]\n", argv[0]);
		return 2;
	}
	const char* in_path = argv[1];
	const uint64_t n_in = std::strtoull(argv[2], nullptr, 10);
	const uint64_t in_per_img = std::strtoull(argv[3], nullptr, 10);
	const uint64_t out_per_img = std::strtoull(argv[4], nullptr, 10);
	const uint64_t n_images = std::strtoull(argv[5], nullptr, 10);
	const uint64_t max_cycles = std::strtoull(argv[6], nullptr, 10);
	const uint64_t stall_cycles = std::strtoull(argv[7], nullptr, 10);
	const uint64_t n_out = out_per_img * n_images;
	const uint64_t pace = argc > 11 ? std::strtoull(argv[11], nullptr, 10) : 0;
	uint32_t limits[FIFO_WORDS] = {};
	if (argc > 10 && std::string(argv[10]) != "-") {
		FILE* lf = std::fopen(argv[10], "rb");
		if (!lf || std::fread(limits, sizeof(uint32_t), N_FIFOS, lf) != std::size_t(N_FIFOS)) {
			std::fprintf(stderr, "cannot read %d FIFO limits from %s\n", N_FIFOS, argv[10]);
			return 2;
		}
		std::fclose(lf);
	}

	std::vector<uint32_t> in(n_in * IN_WORDS), out(n_out * OUT_WORDS);
	FILE* f = std::fopen(in_path, "rb");
	if (!f || std::fread(in.data(), sizeof(uint32_t), in.size(), f) != in.size()) {
		std::fprintf(stderr, "cannot read %llu beats from %s\n", (unsigned long long)n_in, in_path);
		return 2;
	}
	std::fclose(f);

	auto ctx = std::make_unique<VerilatedContext>();
	ctx->commandArgs(1, argv);
	auto top = std::make_unique<Vtrimflow_sim_top>(ctx.get());

	std::vector<uint64_t> link_beats(N_LINKS, 0), link_blocked(N_LINKS, 0), first_in(n_images, 0),
	    last_out(n_images, 0);
	uint32_t valid[LINK_WORDS] = {}, ready[LINK_WORDS] = {};

	std::vector<uint64_t> fifo_peak(FIFO_WORDS, 0);
	set_port(top->fifo_limit, limits, FIFO_WORDS);
	top->ap_rst_n = 0;
	top->s_axis_tvalid = 0;
	top->m_axis_tready = 0;
	for (int i = 0; i < 16; ++i) {
		top->ap_clk = 0; top->eval();
		top->ap_clk = 1; top->eval();
	}
	top->ap_rst_n = 1;

	uint64_t cycle = 0, in_idx = 0, out_idx = 0, last_activity = 0;
	const char* status = "ok";
	while (out_idx < n_out) {
		if (cycle >= max_cycles) { status = "max_cycles"; break; }
		if (cycle - last_activity > stall_cycles) { status = "stall"; break; }
		// pacing: beat i enters no earlier than cycle i * pace / in_per_img (a steady pace cycles per image)
		const bool may_send = in_idx < n_in && (!pace || !in_per_img || cycle * in_per_img >= in_idx * pace);
		top->s_axis_tvalid = may_send;
		if (may_send) set_port(top->s_axis_tdata, &in[in_idx * IN_WORDS], IN_WORDS);
		top->m_axis_tready = 1;
		top->ap_clk = 0;
		top->eval();
		// Handshakes are sampled after the inputs settle, i.e. as the coming rising edge sees them.
		get_port(top->dbg_valid, valid, LINK_WORDS);
		get_port(top->dbg_ready, ready, LINK_WORDS);
		for (int l = 0; l < N_LINKS; ++l) {
			if (bit(valid, l) && bit(ready, l)) { ++link_beats[l]; last_activity = cycle; }
			else if (bit(valid, l)) ++link_blocked[l];  // back-pressure: where deeper FIFOs would help
		}
		for (int k = 0; k < N_FIFOS; ++k) {  // fill level after this edge: beats in minus beats out so far
			const uint64_t fill = link_beats[FIFO_IN[k]] - link_beats[FIFO_OUT[k]];
			if (fill > fifo_peak[k]) fifo_peak[k] = fill;
		}
		const bool in_fire = top->s_axis_tvalid && top->s_axis_tready;
		const bool out_fire = top->m_axis_tvalid && top->m_axis_tready;
		if (in_fire) {
			if (in_per_img && in_idx % in_per_img == 0 && in_idx / in_per_img < n_images)
				first_in[in_idx / in_per_img] = cycle;
			++in_idx;
		}
		if (out_fire) {
			get_port(top->m_axis_tdata, &out[out_idx * OUT_WORDS], OUT_WORDS);
			++out_idx;
			if (out_idx % out_per_img == 0) last_out[out_idx / out_per_img - 1] = cycle + 1;
		}
		top->ap_clk = 1;
		top->eval();
		++cycle;
	}
	top->final();

	f = std::fopen(argv[8], "wb");
	if (!f) { std::fprintf(stderr, "cannot write %s\n", argv[8]); return 2; }
	std::fwrite(out.data(), sizeof(uint32_t), out_idx * OUT_WORDS, f);
	std::fclose(f);

	f = std::fopen(argv[9], "w");
	if (!f) { std::fprintf(stderr, "cannot write %s\n", argv[9]); return 2; }
	auto list = [&](const char* key, const std::vector<uint64_t>& v, std::size_t n) {
		std::fprintf(f, "  \"%s\": [", key);
		for (std::size_t i = 0; i < n; ++i) std::fprintf(f, "%s%llu", i ? ", " : "", (unsigned long long)v[i]);
		std::fprintf(f, "],\n");
	};
	std::fprintf(f, "{\n  \"status\": \"%s\",\n  \"cycles\": %llu,\n  \"in_beats\": %llu,\n  \"out_beats\": %llu,\n",
	             status, (unsigned long long)cycle, (unsigned long long)in_idx, (unsigned long long)out_idx);
	list("first_in", first_in, n_images);
	list("last_out", last_out, n_images);
	list("link_beats", link_beats, N_LINKS);
	list("link_blocked", link_blocked, N_LINKS);
	list("fifo_peak", fifo_peak, N_FIFOS);
	std::fprintf(f, "  \"link_valid\": [");
	for (int l = 0; l < N_LINKS; ++l) std::fprintf(f, "%s%d", l ? ", " : "", int(bit(valid, l)));
	std::fprintf(f, "],\n  \"link_ready\": [");
	for (int l = 0; l < N_LINKS; ++l) std::fprintf(f, "%s%d", l ? ", " : "", int(bit(ready, l)));
	std::fprintf(f, "]\n}\n");
	std::fclose(f);
	return 0;
}
