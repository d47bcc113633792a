#include "tensor/tensor.h"

#include <algorithm>

#include "core/error.h"

namespace emo {

int64_t numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_str(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

Tensor::Tensor(Shape shape, std::vector<float> data) : shape_(std::move(shape)), data_(std::move(data)) {
  EMO_CHECK(numel(shape_) == static_cast<int64_t>(data_.size()), "tensor", "shape ", shape_str(shape_),
            " holds ", numel(shape_), " elements but the data has ", data_.size());
}

void Tensor::zero() {
  std::fill(data_.begin(), data_.end(), 0.0f);
}

void Tensor::resize(Shape shape) {
  shape_ = std::move(shape);
  data_.assign(static_cast<size_t>(numel(shape_)), 0.0f);
}

void Tensor::reshape(Shape shape) {
  EMO_CHECK(numel(shape) == size(), "reshape", "cannot view ", shape_str(shape_), " as ", shape_str(shape));
  shape_ = std::move(shape);
}

}  // namespace emo
