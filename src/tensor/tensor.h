// A small owning fp32 tensor: a shape and a contiguous row-major buffer. Kernels take raw pointers and sizes
// (llm.c style); Tensor is what models and tools hold and pass around.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

namespace emo {

using Shape = std::vector<int64_t>;

int64_t numel(const Shape& shape);
// "[4, 16, 32]"
std::string shape_str(const Shape& shape);

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(Shape shape) : shape_(std::move(shape)), data_(static_cast<size_t>(numel(shape_)), 0.0f) {}
  Tensor(Shape shape, std::vector<float> data);

  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_[i < 0 ? shape_.size() + i : i]; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t size() const { return static_cast<int64_t>(data_.size()); }
  bool empty() const { return data_.empty(); }

  float* data() { return data_.data(); }
  const float* data() const { return data_.data(); }
  std::vector<float>& vec() { return data_; }
  const std::vector<float>& vec() const { return data_; }
  float& operator[](int64_t i) { return data_[i]; }
  float operator[](int64_t i) const { return data_[i]; }

  void zero();
  // Changes the shape (and size), zero-filling; keeps the allocation when it is large enough.
  void resize(Shape shape);
  // Same data, new shape of equal element count.
  void reshape(Shape shape);

 private:
  Shape shape_;
  std::vector<float> data_;
};

}  // namespace emo
